package fs

import (
	"context"
	"sort"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is the FUSE side of every kind of Node: attributes and xattrs. Regular files and
// symlinks add their own operations.
type node struct {
	gofs.Inode
	n     *Node
	ino   uint64
	layer *layerFS
}

var (
	_ gofs.NodeGetattrer   = (*node)(nil)
	_ gofs.NodeGetxattrer  = (*node)(nil)
	_ gofs.NodeListxattrer = (*node)(nil)
	_ gofs.NodeStatfser    = (*node)(nil)
	_ gofs.NodeReaddirer   = (*node)(nil)
)

// fileNode is a regular file. Each open gets a fileHandle, through which its reads go.
type fileNode struct {
	node
	// mu guards path's setting and the io mode below.
	mu sync.Mutex
	// path is the file's path in the layer ("/etc/passwd"; a hardlinked file has one of its
	// names), set by the first Open: a layer has many files and few are opened, so it is not
	// kept for the others. It does not change once set.
	path string

	// The kernel's io mode of the inode: open handles in passthrough and in cached mode (the
	// kernel refuses to mix them).
	passOpens   int
	cachedOpens int
}

var _ gofs.NodeOpener = (*fileNode)(nil)

// symlinkNode is a symbolic link.
type symlinkNode struct{ node }

var _ gofs.NodeReadlinker = (*symlinkNode)(nil)

func (nd *node) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillAttr(nd.n, nd.ino, &out.Attr)
	return gofs.OK
}

// Statfs describes the layer as a read-only filesystem. overlayfs takes the longest name it
// accepts from its layers' f_namelen: zero would make every lookup fail with ENAMETOOLONG.
func (nd *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = blockSize
	out.Frsize = blockSize
	out.NameLen = maxNameLength
	out.Blocks = uint64(nd.layer.bytes+blockSize-1) / blockSize
	out.Files = uint64(nd.layer.files)
	return gofs.OK
}

// Readdir lists a directory as a local filesystem does: "." and ".." first, then its
// entries in name order.
func (nd *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	if nd.n.Kind != KindDir {
		return nil, syscall.ENOTDIR
	}
	parent := nd.ino
	if _, p := nd.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	entries := make([]fuse.DirEntry, 0, len(nd.n.Names)+2)
	entries = append(entries,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: nd.ino},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent})
	for _, name := range nd.n.Names {
		child := nd.GetChild(name)
		if child == nil {
			continue
		}
		entries = append(entries, fuse.DirEntry{Name: name, Mode: child.Mode(), Ino: child.StableAttr().Ino})
	}
	return gofs.NewListDirStream(entries), gofs.OK
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

func (nd *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := nd.n.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), gofs.OK
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), gofs.OK
}

func (nd *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names := make([]string, 0, len(nd.n.Xattrs))
	for k := range nd.n.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
	}
	if len(dest) == 0 {
		return uint32(b.Len()), gofs.OK
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), gofs.OK
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	path := f.pathOnce()
	if r := f.layer.recorder; r != nil {
		r.opened(path, f.n.Size)
	}
	h := openHandle(f)
	h.choosePassthrough()
	if r := f.layer.recorder; r != nil && h.local != nil {
		r.passedThrough(path)
	}
	// The layer never changes: let the kernel keep pages between opens. A file complete in
	// the cache is read by the kernel itself (passthrough, see fileHandle.choosePassthrough).
	return h, fuse.FOPEN_KEEP_CACHE, gofs.OK
}

// pathOnce sets f.path if it is not yet and returns it. The tree is built before the mount
// serves anything and never changes, so the name found is stable.
func (f *fileNode) pathOnce() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.path == "" {
		f.path = "/" + f.Path(nil)
	}
	return f.path
}

func (s *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(s.n.Link), gofs.OK
}
