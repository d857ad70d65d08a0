package artifact

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// placeholderDigest stands for the chunk digests of a tree built from tar headers, which
// know no chunks.
var placeholderDigest = digest.FromString("rill: metadata only").String()

// TreeFromTar builds the tree a node would serve from the tar stream r itself rather than
// from a TOC: the entries rill's converter writes for its headers (NewTree's rules, the same
// extension fields), with placeholder chunks. It reads r to the end-of-archive marker.
// Comparing it with a layer's served tree (CompareMetadata) checks the TOC's metadata.
func TreeFromTar(r io.Reader) (*Tree, error) {
	tr := tar.NewReader(r)
	var headers []*tar.Header
	toc := &estargz.JTOC{Version: 1}
	offset := int64(1)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("tar header %d: %w", len(headers), err)
		}
		typ, ok := tocTypes[h.Typeflag]
		if !ok {
			return nil, fmt.Errorf("%q: tar entry type %q", h.Name, h.Typeflag)
		}
		headers = append(headers, h)
		e := &estargz.TOCEntry{Name: h.Name, Type: typ, Mode: h.Mode, UID: h.Uid, GID: h.Gid,
			LinkName: h.Linkname, DevMajor: int(h.Devmajor), DevMinor: int(h.Devminor), Xattrs: map[string][]byte{}}
		if !h.ModTime.IsZero() && h.ModTime.Unix() != 0 {
			e.ModTime3339 = h.ModTime.UTC().Round(time.Second).Format(time.RFC3339)
		}
		for k, v := range h.PAXRecords {
			if name, ok := cutXattr(k); ok {
				e.Xattrs[name] = []byte(v)
			}
		}
		toc.Entries = append(toc.Entries, e)
		if typ == "reg" && h.Size > 0 {
			e.Size = h.Size
			e.Offset, e.ChunkDigest = offset, placeholderDigest
			offset++
			if h.Size > MaxChunkSize {
				e.ChunkSize = MaxChunkSize
			}
			for off := int64(MaxChunkSize); off < h.Size; off += MaxChunkSize {
				c := &estargz.TOCEntry{Name: h.Name, Type: "chunk", Offset: offset, ChunkOffset: off, ChunkDigest: placeholderDigest}
				if h.Size-off > MaxChunkSize {
					c.ChunkSize = MaxChunkSize
				}
				offset++
				toc.Entries = append(toc.Entries, c)
			}
		}
	}
	ext, err := Extend(toc, headers)
	if err != nil {
		return nil, err
	}
	return NewTree(ext, offset)
}

func cutXattr(k string) (string, bool) {
	const prefix = "SCHILY.xattr."
	if len(k) > len(prefix) && k[:len(prefix)] == prefix {
		return k[len(prefix):], true
	}
	return "", false
}

// CompareMetadata reports the first path where served, a layer's tree as a node serves it,
// differs from want, the tree its tar describes (TreeFromTar): kind, mode, owner, size, link
// target, device, extended attributes, modification time, link count. What the node changes
// on purpose is left out: the metadata of directories the layer only implies (they take the
// layers' below), whiteouts and opaque markers of a bottom layer (dropped).
func CompareMetadata(served, want *Tree) error {
	var walk func(p string, s, w *Node) error
	walk = func(p string, s, w *Node) error {
		if s.Kind != w.Kind {
			return fmt.Errorf("%q is a %v in the TOC, a %v in the tar", p, s.Kind, w.Kind)
		}
		if !(s.Kind == KindDir && s.Implied) {
			if s.Mode != w.Mode || s.UID != w.UID || s.GID != w.GID {
				return fmt.Errorf("%q: mode and owner %o %d:%d in the TOC, %o %d:%d in the tar", p, s.Mode, s.UID, s.GID, w.Mode, w.UID, w.GID)
			}
			if s.ModTime != w.ModTime || s.ModTimeNsec != w.ModTimeNsec {
				return fmt.Errorf("%q: modification time %d.%09d in the TOC, %d.%09d in the tar", p, s.ModTime, s.ModTimeNsec, w.ModTime, w.ModTimeNsec)
			}
			sx, wx := maps.Clone(s.Xattrs), maps.Clone(w.Xattrs)
			delete(sx, OpaqueXattr)
			delete(wx, OpaqueXattr)
			if len(sx) != len(wx) || !maps.EqualFunc(sx, wx, bytes.Equal) {
				return fmt.Errorf("%q: extended attributes %v in the TOC, %v in the tar", p, sx, wx)
			}
		}
		if s.Size != w.Size || s.Link != w.Link || s.Major != w.Major || s.Minor != w.Minor || s.Nlink != w.Nlink && s.Kind != KindDir {
			return fmt.Errorf("%q: size, link target, device or link count differ between the TOC and the tar", p)
		}
		if s.Kind != KindDir {
			return nil
		}
		j := 0
		for i, name := range w.Names {
			if j < len(s.Names) && s.Names[j] == name {
				if err := walk(p+"/"+name, s.Children[j], w.Children[i]); err != nil {
					return err
				}
				j++
				continue
			}
			if w.Children[i].Kind == KindWhiteout {
				continue // dropped in a bottom layer
			}
			return fmt.Errorf("%q is in the tar, not in the TOC", p+"/"+name)
		}
		if j < len(s.Names) {
			return fmt.Errorf("%q is in the TOC, not in the tar", p+"/"+s.Names[j])
		}
		return nil
	}
	return walk("", served.Root, want.Root)
}
