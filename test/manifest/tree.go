package manifest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Whiteout markers of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	xattrPAXPrefix = "SCHILY.xattr."
	userXattr      = "user."
)

// node is one inode of a Tree; hardlinked paths share one node.
type node struct {
	typ    string
	mode   uint32
	uid    int
	gid    int
	size   int64
	mtime  int64
	sha256 string
	target string
	xattrs map[string]string
}

// Tree is the file tree that a stack of image layers describes, computed the way the OCI image
// spec defines it: each layer's whiteouts and opaque markers hide what lower layers hold, then its
// entries are added (replacing what has the same path).
type Tree struct {
	nodes map[string]*node
}

// NewTree returns an empty tree (only the root directory).
func NewTree() *Tree {
	return &Tree{nodes: map[string]*node{"/": {typ: TypeDir, mode: 0o755}}}
}

// change is one tar member of a layer, read but not yet applied.
type change struct {
	hdr  *tar.Header
	path string
	node *node
}

// typeHardlink marks the node of a hardlink member before it is resolved to its target's.
const typeHardlink = "hardlink"

// ApplyLayer applies an uncompressed tar layer to t.
func (t *Tree) ApplyLayer(r io.Reader) error {
	var (
		changes []change
		opaque  []string
		deleted []string
	)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading layer tar: %w", err)
		}
		p := path.Clean("/" + hdr.Name)
		dir, base := path.Split(p)
		dir = path.Clean(dir)
		switch {
		case base == opaqueMarker:
			opaque = append(opaque, dir)
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			deleted = append(deleted, path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		}
		n, err := nodeOf(hdr, tr)
		if err != nil {
			return fmt.Errorf("layer member %q: %w", hdr.Name, err)
		}
		changes = append(changes, change{hdr: hdr, path: p, node: n})
	}
	// Whiteouts hide only what lower layers hold: apply them before this layer's entries.
	for _, d := range opaque {
		t.removeBelow(d)
	}
	for _, p := range deleted {
		t.remove(p)
	}
	for _, c := range changes {
		if err := t.add(c); err != nil {
			return err
		}
	}
	return nil
}

// nodeOf builds the node a tar member describes, hashing a regular file's content.
func nodeOf(hdr *tar.Header, content io.Reader) (*node, error) {
	n := &node{mode: uint32(hdr.Mode) & 0o7777, uid: hdr.Uid, gid: hdr.Gid}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPAXPrefix); ok && strings.HasPrefix(name, userXattr) {
			if n.xattrs == nil {
				n.xattrs = map[string]string{}
			}
			n.xattrs[name] = v
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		n.typ = TypeDir
	case tar.TypeReg:
		n.typ = TypeFile
		h := sha256.New()
		size, err := io.Copy(h, content)
		if err != nil {
			return nil, fmt.Errorf("reading content: %w", err)
		}
		n.size, n.mtime, n.sha256 = size, extractedMtime(hdr.ModTime), hex.EncodeToString(h.Sum(nil))
	case tar.TypeSymlink:
		n.typ, n.target, n.mode = TypeSymlink, hdr.Linkname, 0
	case tar.TypeFifo:
		n.typ = TypeFifo
	case tar.TypeLink:
		n.typ, n.mtime = typeHardlink, extractedMtime(hdr.ModTime) // resolved against its target in add
	default:
		return nil, fmt.Errorf("tar type %q is not modelled by manifest.Tree", hdr.Typeflag)
	}
	return n, nil
}

func (t *Tree) add(c change) error {
	n := c.node
	if n.typ == typeHardlink {
		// Another name for an existing inode. Unpackers (containerd, docker) apply the link
		// member's owner, xattrs, mode and time to that inode, as for any member.
		target := path.Clean("/" + c.hdr.Linkname)
		inode := t.nodes[target]
		if inode == nil || inode.typ == TypeDir {
			return fmt.Errorf("hardlink %q points to %q, which is not a file in the tree", c.path, target)
		}
		inode.uid, inode.gid, inode.mode = n.uid, n.gid, n.mode
		if inode.typ == TypeFile {
			inode.mtime = n.mtime
		}
		for k, v := range n.xattrs {
			if inode.xattrs == nil {
				inode.xattrs = map[string]string{}
			}
			inode.xattrs[k] = v
		}
		n = inode
	}
	t.ensureParents(c.path)
	if old, ok := t.nodes[c.path]; ok {
		if old.typ == TypeDir && n.typ == TypeDir {
			// An existing directory keeps its children and takes the new metadata.
			old.mode, old.uid, old.gid, old.xattrs = n.mode, n.uid, n.gid, n.xattrs
			return nil
		}
		t.remove(c.path)
	}
	t.nodes[c.path] = n
	return nil
}

// ensureParents creates the missing parents of p as a runtime unpacking the layer would:
// root-owned directories with mode 0755.
func (t *Tree) ensureParents(p string) {
	for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
		if _, ok := t.nodes[dir]; ok {
			return
		}
		t.nodes[dir] = &node{typ: TypeDir, mode: 0o755}
	}
}

func (t *Tree) remove(p string) {
	delete(t.nodes, p)
	t.removeBelow(p)
}

func (t *Tree) removeBelow(dir string) {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for p := range t.nodes {
		if strings.HasPrefix(p, prefix) {
			delete(t.nodes, p)
		}
	}
}

// Entries returns the entries at and below each of roots (which must exist).
func (t *Tree) Entries(roots ...string) ([]Entry, error) {
	var entries []Entry
	inode := map[int]any{}
	seen := map[string]bool{}
	for _, root := range roots {
		root = path.Clean(root)
		if _, ok := t.nodes[root]; !ok {
			return nil, fmt.Errorf("root %q is not in the tree", root)
		}
		prefix := strings.TrimSuffix(root, "/") + "/"
		for p, n := range t.nodes {
			if seen[p] || (p != root && !strings.HasPrefix(p, prefix)) {
				continue
			}
			seen[p] = true
			if n.typ == TypeFile {
				inode[len(entries)] = n
			}
			entries = append(entries, Entry{
				Path: p, Type: n.typ, Mode: n.mode, UID: n.uid, GID: n.gid,
				Size: n.size, Mtime: n.mtime, SHA256: n.sha256, Target: n.target, Xattrs: n.xattrs,
			})
		}
	}
	SetLinkGroups(entries, inode)
	return entries, nil
}

// extractedMtime is the modification time, in nanoseconds, that containerd's extraction gives
// an entry: the header's, or the epoch for times before it (containerd bounds them).
func extractedMtime(t time.Time) int64 {
	if t.Before(time.Unix(0, 0)) {
		return 0
	}
	return t.UnixNano()
}
