package images

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rillstream/rill/test/harness"
)

// RootfsLayer writes the tree at root as a gzip tar layer at path, in lexical order, keeping
// owners, modes, times, hardlinks and extended attributes. Device nodes and sockets are left
// out (the runtime provides /dev).
func RootfsLayer(root, path string) (*harness.Layer, error) {
	w, err := harness.NewLayerWriter(path, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	type inode struct{ dev, ino uint64 }
	firstName := map[inode]string{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket) != 0 {
			return nil
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return fmt.Errorf("readlink %s: %w", p, err)
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("tar header of %s: %w", p, err)
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		hdr.Format = tar.FormatPAX
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			id := inode{st.Dev, st.Ino}
			if first, ok := firstName[id]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				firstName[id] = rel
			}
		}
		if err := addXattrs(hdr, p); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return w.Add(hdr, nil)
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("opening %s: %w", p, err)
		}
		defer f.Close()
		return w.Add(hdr, f)
	})
	if err != nil {
		_, _ = w.Close()
		return nil, err
	}
	return w.Close()
}

// addXattrs records the extended attributes of p in hdr's PAX records.
func addXattrs(hdr *tar.Header, p string) error {
	buf := make([]byte, 64*1024)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing xattrs of %s: %w", p, err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 64*1024)
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return fmt.Errorf("reading xattr %s of %s: %w", name, p, err)
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:m])
	}
	return nil
}
