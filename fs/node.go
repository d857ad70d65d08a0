package fs

import (
	"context"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rillstream/rill/cache"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// layerFS answers the FUSE requests of one mounted layer: a fuse.RawFileSystem over the index.
// Nothing it answers depends on the process: node IDs come from the index (inode.go), file
// handles name their mode and are looked up lazily (handle.go), the io mode of each inode is in
// the state directory (iomode.go). So a new process answers the requests of a connection an
// earlier one answered, as that one would have.
type layerFS struct {
	fuse.RawFileSystem // what a read-only layer does not do: ENOSYS

	noPassthrough bool
	reader        *chunkReader
	cache         *cache.Layer // nil: no cache
	readTimeout   time.Duration
	metrics       *Metrics
	log           *logrus.Entry
	// bytes and files of the layer, for statfs.
	bytes int64
	files int
	// recorder records first opens (nil: not recording).
	recorder *recorder
	// backgroundRate caps the background fetch (nil: no cap).
	backgroundRate *rate.Limiter

	nodes   *nodeTable
	io      *ioModes
	handles *handleTable
	conn    *conn // for the passthrough ioctls; set before the first request
	// passthroughOff is set once the kernel refused a backing file: not root, or no
	// passthrough on this connection.
	passthroughOff atomic.Bool
}

func (l *layerFS) String() string { return "rill" }

// entryValid is how long, in seconds, the kernel may keep entries and attributes: the layer is
// immutable for as long as it is mounted.
const entryValid = uint64(cacheForever / time.Second)

func (l *layerFS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	dir := l.nodes.node(h.NodeId)
	if dir == nil {
		return fuse.Status(syscall.ESTALE)
	}
	if dir.Kind != KindDir {
		return fuse.ENOTDIR
	}
	child := dir.Child(name)
	out.EntryValid = entryValid
	out.AttrValid = entryValid
	if child == nil {
		// A negative entry (node ID 0) the kernel keeps, as it keeps the others.
		out.NodeId = 0
		return fuse.OK
	}
	id := l.nodes.id(child)
	out.NodeId = id
	out.Generation = 1
	fillAttr(child, id, &out.Attr)
	return fuse.OK
}

// Forget: every node lives as long as the mount; the kernel's lookup counts need no keeping.
func (l *layerFS) Forget(nodeid, nlookup uint64) {}

func (l *layerFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n := l.nodes.node(in.NodeId)
	if n == nil {
		return fuse.Status(syscall.ESTALE)
	}
	out.AttrValid = entryValid
	fillAttr(n, in.NodeId, &out.Attr)
	return fuse.OK
}

// StatFs describes the layer as a read-only filesystem. overlayfs takes the longest name it
// accepts from its layers' f_namelen: zero would make every lookup fail with ENAMETOOLONG.
func (l *layerFS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = blockSize
	out.Frsize = blockSize
	out.NameLen = maxNameLength
	out.Blocks = uint64(l.bytes+blockSize-1) / blockSize
	out.Files = uint64(l.files)
	return fuse.OK
}

func (l *layerFS) Readlink(_ <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n := l.nodes.node(h.NodeId)
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if n.Kind != KindSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(n.Link), fuse.OK
}

func (l *layerFS) GetXAttr(_ <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n := l.nodes.node(h.NodeId)
	if n == nil {
		return 0, fuse.Status(syscall.ESTALE)
	}
	v, ok := n.Xattrs[attr]
	if !ok {
		return 0, fuse.ENOATTR
	}
	if len(dest) == 0 {
		return uint32(len(v)), fuse.OK
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

func (l *layerFS) ListXAttr(_ <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n := l.nodes.node(h.NodeId)
	if n == nil {
		return 0, fuse.Status(syscall.ESTALE)
	}
	names := make([]string, 0, len(n.Xattrs))
	for k := range n.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
	}
	if len(dest) == 0 {
		return uint32(b.Len()), fuse.OK
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), fuse.ERANGE
	}
	return uint32(copy(dest, b.String())), fuse.OK
}

// Flush has nothing to write back.
func (l *layerFS) Flush(_ <-chan struct{}, _ *fuse.FlushIn) fuse.Status { return fuse.OK }

func (l *layerFS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if _, st := l.dir(in.NodeId); !st.Ok() {
		return st
	}
	// The listing never changes: the kernel may keep it.
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (l *layerFS) ReleaseDir(*fuse.ReleaseIn) {}

// dirEntry returns entry i of directory id as a local filesystem lists it: "." and ".."
// first, then the entries in name order.
func (l *layerFS) dirEntry(id uint64, dir *Node, i int) (fuse.DirEntry, *Node, bool) {
	switch {
	case i == 0:
		return fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: id, Off: 1}, nil, true
	case i == 1:
		parent := uint64(1)
		if id > 1 {
			parent = l.nodes.parent[id-1]
		}
		return fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent, Off: 2}, nil, true
	case i-2 < len(dir.Names):
		child := dir.Children[i-2]
		return fuse.DirEntry{Name: dir.Names[i-2], Mode: child.FileMode() & syscall.S_IFMT, Ino: l.nodes.id(child), Off: uint64(i + 1)}, child, true
	}
	return fuse.DirEntry{}, nil, false
}

// dir returns directory id.
func (l *layerFS) dir(id uint64) (*Node, fuse.Status) {
	dir := l.nodes.node(id)
	if dir == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if dir.Kind != KindDir {
		return nil, fuse.ENOTDIR
	}
	return dir, fuse.OK
}

func (l *layerFS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	dir, st := l.dir(in.NodeId)
	if !st.Ok() {
		return st
	}
	for i := int(in.Offset); ; i++ {
		e, _, ok := l.dirEntry(in.NodeId, dir, i)
		if !ok || !out.AddDirEntry(e) {
			return fuse.OK
		}
	}
}

func (l *layerFS) ReadDirPlus(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	dir, st := l.dir(in.NodeId)
	if !st.Ok() {
		return st
	}
	for i := int(in.Offset); ; i++ {
		e, child, ok := l.dirEntry(in.NodeId, dir, i)
		if !ok {
			return fuse.OK
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			return fuse.OK
		}
		if child != nil { // "." and "..": no entry (node ID 0), the kernel looks nothing up
			eo.NodeId = e.Ino
			eo.Generation = 1
			eo.EntryValid = entryValid
			eo.AttrValid = entryValid
			fillAttr(child, e.Ino, &eo.Attr)
		}
	}
}

// cancelContext returns a context that ends when cancel is closed (the kernel interrupted the
// request) or after timeout.
func cancelContext(cancel <-chan struct{}, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := context.WithTimeout(context.Background(), timeout)
	if cancel == nil {
		return ctx, stop
	}
	go func() {
		select {
		case <-cancel:
			stop()
		case <-ctx.Done():
		}
	}()
	return ctx, stop
}

// blockSize is the block size the layer reports, and allocates in: ext4's, the filesystem
// containerd's extraction lands on most often.
const blockSize = 4096

// fillAttr fills a's attributes from n as a local filesystem (ext4) shows the extracted
// file: directories are one block of 4096 bytes, regular files occupy whole blocks, symlinks
// up to 59 bytes are stored in the inode (no block), devices and FIFOs take none.
func fillAttr(n *Node, ino uint64, a *fuse.Attr) {
	a.Ino = ino
	a.Mode = n.FileMode()
	a.Nlink = n.Nlink
	a.Owner = fuse.Owner{Uid: n.UID, Gid: n.GID}
	a.Size = uint64(n.Size)
	a.Blksize = blockSize
	a.Blocks = 0
	switch n.Kind {
	case KindDir:
		a.Size = blockSize
		a.Blocks = blockSize / 512
	case KindReg:
		a.Blocks = (uint64(n.Size) + blockSize - 1) / blockSize * (blockSize / 512)
	case KindSymlink:
		if n.Size >= 60 {
			a.Blocks = blockSize / 512
		}
	}
	a.Mtime, a.Mtimensec = uint64(n.ModTime), n.ModTimeNsec
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	if n.Kind == KindChar || n.Kind == KindBlock {
		a.Rdev = uint32(unixMkdev(n.Major, n.Minor))
	}
}

// unixMkdev encodes a device number the way the kernel's new_encode_dev does (the
// encoding FUSE attributes carry).
func unixMkdev(major, minor uint32) uint32 {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12
}
