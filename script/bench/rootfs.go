package main

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rillstream/rill/test/harness"
)

// rootfsLayer writes the tree at root as a gzip tar layer at path, in lexical order, keeping
// owners, modes and hardlinks (not extended attributes: the workloads have none). Device
// nodes, sockets and what is below /proc and /dev are left out.
func rootfsLayer(root, path string) (*harness.Layer, error) {
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
		if hdr.Typeflag != tar.TypeReg {
			if err := w.Add(hdr, nil); err != nil {
				return err
			}
			if fi.IsDir() && (rel == "proc" || rel == "dev" || rel == "sys") {
				return filepath.SkipDir // their mount points only
			}
			return nil
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
