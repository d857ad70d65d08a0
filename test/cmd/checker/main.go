// Command checker runs inside a test container: it walks the paths given as arguments (without
// following symlinks) and prints the tree it finds in the canonical form of package
// test/manifest, which the e2e tests compare with the tree the image's layers describe.
//
// It is built static (CGO_ENABLED=0) and needs nothing else in the image.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rillstream/rill/test/manifest"
)

// With -stat it also prints what stat(2) and getdents(2) answer beyond a layer's metadata
// (st_blocks, directories' st_size and mtime, the "." and ".." entries of listings) and the
// root directory's mode and owner: for comparing a streamed root filesystem with containerd's
// extraction of the same image.
func main() {
	args := os.Args[1:]
	stat := len(args) > 0 && args[0] == "-stat"
	if stat {
		args = args[1:]
	}
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: checker [-stat] PATH...")
		os.Exit(2)
	}
	entries, err := walk(args, stat)
	if err == nil && stat {
		var root manifest.Entry
		// The runtime creates mountpoints in "/": its mtime is the container's, not the image's.
		root, _, err = entryOf("/", stat)
		if root.Stat != nil {
			root.Stat.Mtime = -1
		}
		entries = append(entries, root)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "checker: %v\n", err)
		os.Exit(1)
	}
	if _, err := io.WriteString(os.Stdout, manifest.Text(entries)); err != nil {
		fmt.Fprintf(os.Stderr, "checker: writing the manifest: %v\n", err)
		os.Exit(1)
	}
}

type inodeID struct{ dev, ino uint64 }

func walk(roots []string, stat bool) ([]manifest.Entry, error) {
	var entries []manifest.Entry
	inode := map[int]any{}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			e, st, err := entryOf(p, stat)
			if err != nil {
				return err
			}
			if e.Type == manifest.TypeFile && st.Nlink > 1 {
				inode[len(entries)] = inodeID{dev: st.Dev, ino: st.Ino}
			}
			entries = append(entries, e)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walking %s: %w", root, err)
		}
	}
	manifest.SetLinkGroups(entries, inode)
	return entries, nil
}

func entryOf(p string, stat bool) (manifest.Entry, *syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return manifest.Entry{}, nil, fmt.Errorf("lstat %s: %w", p, err)
	}
	e := manifest.Entry{
		Path: filepath.Clean(p),
		Mode: st.Mode & 0o7777,
		UID:  int(st.Uid),
		GID:  int(st.Gid),
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		e.Type = manifest.TypeDir
	case syscall.S_IFREG:
		e.Type = manifest.TypeFile
		e.Size, e.Mtime = st.Size, st.Mtim.Sec*1e9+st.Mtim.Nsec
		sum, err := hashFile(p)
		if err != nil {
			return e, nil, err
		}
		e.SHA256 = sum
	case syscall.S_IFLNK:
		e.Type, e.Mode = manifest.TypeSymlink, 0
		target, err := os.Readlink(p)
		if err != nil {
			return e, nil, fmt.Errorf("readlink %s: %w", p, err)
		}
		e.Target = target
	case syscall.S_IFIFO:
		e.Type = manifest.TypeFifo
	default:
		e.Type = fmt.Sprintf("unexpected-type-%o", st.Mode&syscall.S_IFMT)
	}
	xattrs, err := userXattrs(p)
	if err != nil {
		return e, nil, err
	}
	e.Xattrs = xattrs
	if stat {
		e.Stat = &manifest.Stat{Blocks: st.Blocks}
		if e.Type == manifest.TypeDir {
			e.Stat.Size, e.Stat.Mtime = st.Size, st.Mtim.Sec*1e9+st.Mtim.Nsec
			if e.Stat.Dots, err = dots(p); err != nil {
				return e, nil, err
			}
		}
	}
	return e, &st, nil
}

// dots returns the "." and ".." entries that directory p's listing holds (os.ReadDir and
// syscall.ParseDirent leave them out), comma-separated in the order listed.
func dots(p string) (string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("opening directory %s: %w", p, err)
	}
	defer unix.Close(fd)
	var found []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return "", fmt.Errorf("listing %s: %w", p, err)
		}
		if n == 0 {
			return strings.Join(found, ","), nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name (NUL-terminated).
		for off := 0; off < n; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s == "." || s == ".." {
				found = append(found, s)
			}
			off += reclen
		}
	}
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("opening %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// userXattrs returns the user.* extended attributes of p (not following symlinks).
func userXattrs(p string) (map[string]string, error) {
	names, err := listXattrs(p)
	if err != nil {
		return nil, err
	}
	var attrs map[string]string
	for _, name := range names {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		value, err := getXattr(p, name)
		if err != nil {
			return nil, err
		}
		if attrs == nil {
			attrs = map[string]string{}
		}
		attrs[name] = value
	}
	return attrs, nil
}

func listXattrs(p string) ([]string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(p, buf)
		switch {
		case errors.Is(err, unix.ERANGE):
			continue
		case errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("listing xattrs of %s: %w", p, err)
		}
		var names []string
		for _, name := range strings.Split(string(buf[:n]), "\x00") {
			if name != "" {
				names = append(names, name)
			}
		}
		return names, nil
	}
}

func getXattr(p, name string) (string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, buf)
		switch {
		case errors.Is(err, unix.ERANGE):
			continue
		case err != nil:
			return "", fmt.Errorf("reading xattr %s of %s: %w", name, p, err)
		}
		return string(buf[:n]), nil
	}
}
