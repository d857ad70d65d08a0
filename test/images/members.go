package images

import (
	"archive/tar"
	"io"
	"strings"
	"time"

	"github.com/rillstream/rill/test/harness"
)

// fixtureEpoch is the modification time of every fixture member, in seconds (whole seconds, so
// that the tar headers and the file system agree exactly).
const fixtureEpoch = 1700000000

// member is one tar member of a layer being built.
type member struct {
	hdr     *tar.Header
	content io.Reader // regular files only
}

func header(typ byte, name string, mode int64, uid, gid int) *tar.Header {
	return &tar.Header{
		Typeflag: typ, Name: name, Mode: mode, Uid: uid, Gid: gid,
		ModTime: time.Unix(fixtureEpoch, 0), Format: tar.FormatPAX,
	}
}

func dir(name string, mode int64, uid, gid int) member {
	return member{hdr: header(tar.TypeDir, strings.TrimSuffix(name, "/")+"/", mode, uid, gid)}
}

func file(name string, mode int64, uid, gid int, content string) member {
	h := header(tar.TypeReg, name, mode, uid, gid)
	h.Size = int64(len(content))
	return member{hdr: h, content: strings.NewReader(content)}
}

func bigFile(name string, mode int64, size int64, content io.Reader) member {
	h := header(tar.TypeReg, name, mode, 0, 0)
	h.Size = size
	return member{hdr: h, content: io.LimitReader(content, size)}
}

// zeros returns n zero bytes.
func zeros(n int64) io.Reader { return io.LimitReader(zeroReader{}, n) }

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func symlink(name, target string, uid, gid int) member {
	h := header(tar.TypeSymlink, name, 0o777, uid, gid)
	h.Linkname = target
	return member{hdr: h}
}

// hardlink adds a name for target. Like every tar writer, it repeats the inode's metadata:
// unpackers (containerd, docker) apply a link member's owner and mode to the shared inode.
func hardlink(name, target string, mode int64, uid, gid int) member {
	h := header(tar.TypeLink, name, mode, uid, gid)
	h.Linkname = target
	return member{hdr: h}
}

func fifo(name string, mode int64) member {
	return member{hdr: header(tar.TypeFifo, name, mode, 0, 0)}
}

// whiteout hides the lower layers' path (file or directory) named name.
func whiteout(name string) member {
	i := strings.LastIndex(name, "/")
	return file(name[:i+1]+".wh."+name[i+1:], 0o644, 0, 0, "")
}

// opaque hides everything the lower layers hold below dir.
func opaque(dir string) member {
	return file(strings.TrimSuffix(dir, "/")+"/.wh..wh..opq", 0o644, 0, 0, "")
}

// withXattrs adds extended attributes, written as PAX SCHILY.xattr records.
func withXattrs(m member, attrs map[string]string) member {
	if m.hdr.PAXRecords == nil {
		m.hdr.PAXRecords = map[string]string{}
	}
	for k, v := range attrs {
		m.hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	return m
}

// writeLayer writes members, in order, as a gzip tar layer at path.
func writeLayer(path string, level int, members []member) (*harness.Layer, error) {
	w, err := harness.NewLayerWriter(path, level)
	if err != nil {
		return nil, err
	}
	for _, m := range members {
		if err := w.Add(m.hdr, m.content); err != nil {
			_, _ = w.Close()
			return nil, err
		}
	}
	return w.Close()
}
