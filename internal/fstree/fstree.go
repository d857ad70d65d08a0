package fstree

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Describe describes root and every path below it: mode, owner, st_blocks, for directories
// st_size and the names getdents returns ("." and ".." included); root gets no more. Mtimes are given to the
// nanosecond, directories' included, except for the paths in noMtime (relative to root) and
// for whiteouts (0/0 character devices): extraction sets those to the time it ran — pass the
// directories the layers only imply (ImpliedDirs) as noMtime.
func Describe(root string, noMtime map[string]bool) (map[string]string, error) {
	out := map[string]string{}
	// An inode is its device and number: overlayfs shows each lower layer's files with that
	// layer's device, and two layers may use the same inode numbers.
	type inode struct{ dev, ino uint64 }
	firstByInode := map[inode]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		var b strings.Builder
		fmt.Fprintf(&b, "mode=%v uid=%d gid=%d", fi.Mode(), st.Uid, st.Gid)
		if fi.IsDir() {
			names, err := rawListing(p)
			if err != nil {
				return err
			}
			// ext4 grows a directory past one block (and indexes it) when its entries do not
			// fit one; the node reports one block for every directory, so sizes compare for
			// directories whose entries fit a block only.
			if ext4FitsOneBlock(names) {
				fmt.Fprintf(&b, " blocks=%d size=%d", st.Blocks, fi.Size())
			}
			fmt.Fprintf(&b, " listing=%q", names)
		} else if xattrs(p) == "[]" {
			// ext4 may store extended attributes in a block of their own, which st_blocks
			// counts; files with none compare.
			fmt.Fprintf(&b, " blocks=%d", st.Blocks)
		}
		if rel == "." {
			// The root itself: its owner and mode (its mtime is the extraction's).
			out[rel] = b.String()
			return nil
		}
		isWhiteout := fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0
		if !isWhiteout && !noMtime[rel] {
			mtime := fi.ModTime()
			fmt.Fprintf(&b, " mtime=%d.%09d", mtime.Unix(), mtime.Nanosecond())
		}
		switch {
		case fi.Mode().IsRegular():
			sum, err := hashFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", rel, err)
			}
			fmt.Fprintf(&b, " size=%d sha256=%x", fi.Size(), sum)
			if st.Nlink > 1 {
				if first, ok := firstByInode[inode{uint64(st.Dev), st.Ino}]; ok {
					fmt.Fprintf(&b, " hardlink-of=%s", first)
				} else {
					firstByInode[inode{uint64(st.Dev), st.Ino}] = rel
				}
				fmt.Fprintf(&b, " nlink=%d", st.Nlink)
			}
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " target=%s", target)
		case fi.Mode()&os.ModeDevice != 0:
			fmt.Fprintf(&b, " dev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		fmt.Fprintf(&b, " xattrs=%s", xattrs(p))
		out[rel] = b.String()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("describe %s: %w", root, err)
	}
	return out, nil
}

// ext4FitsOneBlock reports whether a directory with these entries ("." and ".." included)
// fits one 4096-byte ext4 directory block: each entry takes 8 bytes and its name rounded up to
// 4, and a checksum tail takes 12.
func ext4FitsOneBlock(names []string) bool {
	n := 12
	for _, name := range names {
		n += 8 + (len(name)+3)&^3
	}
	return n <= 4096
}

// rawListing returns the names getdents(2) gives for dir, "." and ".." included (os.ReadDir
// leaves them out), sorted.
func rawListing(dir string) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("getdents %s: %w", dir, err)
		}
		if n <= 0 {
			break
		}
		for off := 0; off < n; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			reclen := int(binary.LittleEndian.Uint16(buf[off+16 : off+18]))
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			names = append(names, string(name))
			off += reclen
		}
	}
	sort.Strings(names)
	return names, nil
}

func hashFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "error:" + err.Error()
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var parts []string
	for _, name := range names {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			parts = append(parts, name+"=error:"+err.Error())
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%q", name, v[:m]))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// Diff lists the paths whose descriptions differ, in order, as "path: want ... / got ...".
func Diff(want, got map[string]string) []string {
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var diffs []string
	for _, p := range paths {
		if want[p] != got[p] {
			diffs = append(diffs, fmt.Sprintf("%s:\n  want: %s\n  got:  %s", p, want[p], got[p]))
		}
	}
	return diffs
}

// ImpliedDirs returns the directories a tar layer implies without listing them: the parents
// of its entries (whiteouts and opaque markers included) that have no entry of their own,
// as paths relative to the layer root. Extraction creates them at the time it runs.
func ImpliedDirs(r io.Reader) (map[string]bool, error) {
	listed := map[string]bool{}
	parents := map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read layer tar: %w", err)
		}
		name := path.Clean("/" + hdr.Name)[1:]
		if name == "" {
			continue
		}
		if hdr.Typeflag == tar.TypeDir {
			listed[name] = true
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			parents[dir] = true
		}
	}
	implied := map[string]bool{}
	for dir := range parents {
		if !listed[dir] {
			implied[dir] = true
		}
	}
	return implied, nil
}
