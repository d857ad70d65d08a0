package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	cfs "github.com/containerd/continuity/fs"
	"github.com/rillstream/rill/artifact"
	"golang.org/x/sys/unix"
)

// InheritImplied gives each directory that the layer only implies (a parent of its entries
// with no entry of its own) the metadata of the same directory in the layers below it, as
// containerd does when it extracts a layer onto its parents (archive.WithParents): owner,
// mode, times and extended attributes but trusted.* ones. Overlayfs shows a directory with
// the attributes of its topmost layer, so without this an upper layer that adds /tmp/x
// without listing /tmp would turn the container's /tmp from 1777 into 0755.
//
// lowers are the root directories of the layers below, topmost first (overlayfs's lowerdir
// order). For each implied directory the topmost lower that has the path decides, as in
// containerd: a directory gives its metadata; anything else — the path was replaced — leaves
// the defaults (0755, root). Paths are resolved in a lower as containerd resolves them
// (symlinks bounded by the lower's root). Call it before Mount; the root of the layer is left
// as it is (containerd's is the snapshot directory it creates).
func (idx *Index) InheritImplied(lowers []string) error {
	var firstErr error
	var walk func(n *Node, dir string)
	walk = func(n *Node, dir string) {
		for i, name := range n.Names {
			c := n.Children[i]
			if c.Kind != KindDir {
				continue
			}
			p := dir + "/" + name
			if c.Implied {
				inherited, err := inheritFrom(c, p, lowers)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if !inherited {
					artifact.ImpliedDefaults(c, n)
				}
			}
			walk(c, p)
		}
	}
	walk(idx.Root, "")
	return firstErr
}

// inheritFrom sets n, the implied directory at p, from the topmost of lowers that has p, and
// reports whether one had it as a directory.
func inheritFrom(n *Node, p string, lowers []string) (bool, error) {
	for _, lower := range lowers {
		lp, err := cfs.RootPath(lower, p)
		if err != nil {
			return false, fmt.Errorf("resolve %s in %s: %w", p, lower, err)
		}
		fi, err := os.Lstat(lp)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if errors.Is(err, unix.ENOTDIR) {
			// Below a file of that lower: replaced, the defaults. (containerd fails to
			// extract such a layer.)
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("implied directory %s: %w", p, err)
		}
		if !fi.IsDir() {
			return false, nil // replaced below: the defaults
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false, fmt.Errorf("implied directory %s: no stat of %s", p, lp)
		}
		xattrs, err := copyableXattrs(lp)
		if err != nil {
			return false, fmt.Errorf("implied directory %s: %w", p, err)
		}
		n.Mode = st.Mode & 0o7777
		n.UID, n.GID = st.Uid, st.Gid
		n.ModTime, n.ModTimeNsec = st.Mtim.Sec, uint32(st.Mtim.Nsec)
		for k, v := range xattrs {
			if n.Xattrs == nil {
				n.Xattrs = map[string][]byte{}
			}
			if _, set := n.Xattrs[k]; !set {
				n.Xattrs[k] = v
			}
		}
		return true, nil
	}
	return false, nil
}

// copyableXattrs returns the extended attributes of p that containerd copies up to an implied
// directory: all but trusted.* (overlayfs's own among them).
func copyableXattrs(p string) (map[string][]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	var out map[string][]byte
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || strings.HasPrefix(name, "trusted.") {
			continue
		}
		v := make([]byte, artifact.MaxXattrValueLength)
		m, err := unix.Lgetxattr(p, name, v)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", name, p, err)
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v[:m:m]
	}
	return out, nil
}
