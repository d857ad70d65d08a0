// Command checker runs inside a test container: it walks the paths given as arguments (without
// following symlinks) and prints the tree it finds in the canonical form of package
// test/manifest, which the e2e tests compare with the tree the image's layers describe.
//
// It is built static (CGO_ENABLED=0) and needs nothing else in the image.
package main

import (
	"crypto/sha256"
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

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: checker PATH...")
		os.Exit(2)
	}
	entries, err := walk(os.Args[1:])
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

func walk(roots []string) ([]manifest.Entry, error) {
	var entries []manifest.Entry
	inode := map[int]any{}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			e, st, err := entryOf(p)
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

func entryOf(p string) (manifest.Entry, *syscall.Stat_t, error) {
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
	return e, &st, nil
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
