package fs

import (
	"crypto/rand"
	"encoding/binary"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rillstream/rill/cache"
	"github.com/sirupsen/logrus"
)

// File handles.
//
// A handle the kernel holds outlives the process that gave it out, so it is a name, not a
// pointer: its top bits say how the file was opened (passthrough: the kernel reads the cached
// file itself and never asks; direct: the inode was in passthrough mode and this open could
// not join it, so it bypasses the page cache), the rest are this process's generation and a
// sequence number. What a handle holds in memory (the cached file it reads, its read-ahead
// window) is found by that name, or made again on its first request in a new process.
const (
	fhPassthrough = uint64(1) << 63
	fhDirect      = uint64(1) << 62
	fhGenShift    = 32
	fhGenMask     = uint64(1)<<30 - 1
)

type handleTable struct {
	gen  uint64
	next atomic.Uint32
	mu   sync.Mutex
	open map[uint64]*fileHandle
}

func newHandleTable() *handleTable {
	var b [8]byte
	rand.Read(b[:])
	return &handleTable{gen: binary.LittleEndian.Uint64(b[:]) & fhGenMask, open: map[uint64]*fileHandle{}}
}

func (t *handleTable) newFH(flags uint64) uint64 {
	return flags | t.gen<<fhGenShift | uint64(t.next.Add(1))
}

// fileHandle is an open of a regular file read through rill. It holds the file's cached content,
// if the layer has a cache, for as long as it is open: an open cache.File is never evicted, so
// what a reader has found in the cache stays there while it reads.
type fileHandle struct {
	id     uint64
	n      *Node
	cached *cache.File // nil: reads go to the blob only

	// Sequential reads grow a read-ahead window: next is where the last read ended.
	mu    sync.Mutex
	next  int64
	ahead int64
}

// cacheKey is the name of a regular file's content in the layer's cache: the blob offset of
// its first chunk, stable across restarts and shared by hardlinks. Files without chunks
// (empty ones) have none.
func cacheKey(n *Node) (string, bool) {
	if len(n.Chunks) == 0 {
		return "", false
	}
	return strconv.FormatInt(n.Chunks[0].BlobOffset, 10), true
}

// openHandle opens a handle on node id, with its cached content when the layer has a cache.
// Failing to open the cached content only means reading without it.
func (l *layerFS) openHandle(id uint64, n *Node) *fileHandle {
	h := &fileHandle{id: id, n: n}
	key, ok := cacheKey(n)
	if l.cache == nil || !ok {
		return h
	}
	cf, err := l.cache.File(key, n.Size)
	if err != nil {
		l.metrics.cacheOpenErrors.Inc()
		l.log.WithError(err).WithFields(logrus.Fields{"ino": id, "key": key}).Debug("cache unavailable for this open; reading from the blob")
		return h
	}
	h.cached = cf
	return h
}

func (h *fileHandle) close() {
	if h.cached != nil {
		h.cached.Close()
	}
}

func (l *layerFS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := l.nodes.node(in.NodeId)
	switch {
	case n == nil:
		return fuse.Status(syscall.ESTALE)
	case n.Kind == KindDir:
		return fuse.Status(syscall.EISDIR)
	case n.Kind != KindReg:
		return fuse.EINVAL
	}
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	var path string
	if r := l.recorder; r != nil {
		path = l.nodes.path(in.NodeId)
		r.opened(path, n.Size)
	}
	h := l.openHandle(in.NodeId, n)
	if l.passThrough(h, out) {
		if r := l.recorder; r != nil {
			r.passedThrough(path)
		}
		h.close() // the kernel holds the cached file now
		return fuse.OK
	}
	l.handles.mu.Lock()
	l.handles.open[out.Fh] = h
	l.handles.mu.Unlock()
	return fuse.OK
}

// passThrough decides the io mode of an open and fills out for it. A file complete in the
// cache is read by the kernel itself (FUSE passthrough, Linux ≥ 6.9, as root) — open() never
// waits for a download — unless the inode has files open in cached mode (the kernel would
// refuse the open). Every passthrough open of an inode shares one backing ID, registered at
// the first and unregistered at the last release. An open that cannot join an inode in
// passthrough mode is a direct one, outside the kernel's io modes. Reports whether it passed
// the file through.
func (l *layerFS) passThrough(h *fileHandle, out *fuse.OpenOut) bool {
	l.io.mu.Lock()
	defer l.io.mu.Unlock()
	if l.io.data == nil { // stopping
		out.Fh = l.handles.newFH(fhDirect)
		out.OpenFlags = fuse.FOPEN_DIRECT_IO
		return false
	}
	id := h.id
	passOpens := l.io.get(id, fieldPass)
	if h.cached != nil && !l.noPassthrough && !l.passthroughOff.Load() && l.io.get(id, fieldCached) == 0 && h.cached.Complete() {
		backing := l.io.get(id, fieldBacking)
		if passOpens == 0 || backing == 0 {
			backing = l.registerBacking(h)
		}
		if backing > 0 {
			l.io.set(id, fieldBacking, backing)
			l.io.set(id, fieldPass, passOpens+1)
			l.metrics.passthroughOpens.Inc()
			out.Fh = l.handles.newFH(fhPassthrough)
			out.BackingID = backing
			// FOPEN_PASSTHROUGH alone: with FOPEN_KEEP_CACHE the kernel fails the open (EIO).
			out.OpenFlags = fuse.FOPEN_PASSTHROUGH
			return true
		}
	}
	if passOpens > 0 {
		out.Fh = l.handles.newFH(fhDirect)
		out.OpenFlags = fuse.FOPEN_DIRECT_IO
		return false
	}
	l.io.set(id, fieldCached, l.io.get(id, fieldCached)+1)
	out.Fh = l.handles.newFH(0)
	// The layer never changes: let the kernel keep pages between opens.
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return false
}

// registerBacking registers h's complete cached file with the kernel; 0 if it cannot be (the
// kernel did not negotiate passthrough, or the file went away meanwhile).
func (l *layerFS) registerBacking(h *fileHandle) int32 {
	local, err := h.cached.OpenComplete()
	if err != nil {
		return 0
	}
	defer local.Close()
	id, err := l.conn.backingOpen(local)
	if err != nil || id <= 0 {
		if err == syscall.EPERM || err == syscall.EOPNOTSUPP || err == syscall.ENOTTY || err == syscall.EINVAL {
			// Not root, or the kernel does not do passthrough on this connection: stop trying.
			l.passthroughOff.Store(true)
		}
		l.log.WithError(err).Debug("passthrough unavailable; reading through rill")
		return 0
	}
	return id
}

func (l *layerFS) Release(_ <-chan struct{}, in *fuse.ReleaseIn) {
	switch {
	case in.Fh&fhPassthrough != 0:
		l.io.mu.Lock()
		if l.io.data != nil {
			pass := l.io.get(in.NodeId, fieldPass) - 1
			if pass <= 0 {
				pass = 0
				if b := l.io.get(in.NodeId, fieldBacking); b > 0 {
					if err := l.conn.backingClose(b); err != nil {
						l.log.WithError(err).Debug("unregister passthrough backing file")
					}
				}
				l.io.set(in.NodeId, fieldBacking, 0)
			}
			l.io.set(in.NodeId, fieldPass, pass)
		}
		l.io.mu.Unlock()
		return
	case in.Fh&fhDirect == 0:
		l.io.mu.Lock()
		if l.io.data != nil {
			l.io.set(in.NodeId, fieldCached, max(0, l.io.get(in.NodeId, fieldCached)-1))
		}
		l.io.mu.Unlock()
	}
	l.handles.mu.Lock()
	h := l.handles.open[in.Fh]
	delete(l.handles.open, in.Fh)
	l.handles.mu.Unlock()
	if h != nil {
		h.close()
	}
}

// handle returns the handle fh of node id: the one opened by this process, or, for a handle
// an earlier process gave out, one made now.
func (l *layerFS) handle(fh, id uint64, n *Node) *fileHandle {
	l.handles.mu.Lock()
	defer l.handles.mu.Unlock()
	if h, ok := l.handles.open[fh]; ok && h.id == id {
		return h
	}
	h := l.openHandle(id, n)
	l.handles.open[fh] = h
	return h
}

// Read serves a read of the file: from the cache where it holds the bytes, else from the
// blob (verified, then stored). It never returns unverified bytes.
func (l *layerFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	n := l.nodes.node(in.NodeId)
	if n == nil {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if n.Kind != KindReg {
		return nil, fuse.EINVAL
	}
	h := l.handle(in.Fh, in.NodeId, n)
	ctx, stop := cancelContext(cancel, l.readTimeout)
	defer stop()
	off := int64(in.Offset)
	dest := buf[:min(len(buf), int(in.Size))]
	began := time.Now()
	got, network, err := l.reader.readFileAhead(ctx, n, h.cached, dest, off, h.readAhead(off, len(dest)))
	source := "cache"
	if network {
		source = "network"
	}
	l.metrics.readDuration.WithLabelValues(source).Observe(time.Since(began).Seconds())
	if err != nil {
		l.metrics.readErrors.Inc()
		l.log.WithError(err).WithFields(logrus.Fields{"ino": in.NodeId, "offset": off, "length": len(dest)}).Warn("read failed; answering EIO")
		return nil, fuse.EIO
	}
	if r := l.recorder; r != nil {
		r.read(l.nodes.path(in.NodeId), got)
	}
	return fuse.ReadResultData(dest[:got]), fuse.OK
}

// maxReadAhead bounds the read-ahead window of a sequential reader.
const maxReadAhead = 8 << 20

// sequentialSlack is how far from where the last read ended a read may start and still
// count as sequential: the kernel sends a sequential reader's reads (up to 128 KiB each, its
// own read-ahead among them) a few at a time, and they reach the filesystem in any order.
const sequentialSlack = 256 << 10

// readAhead returns how far to read ahead for a read at off: nothing for a random read; for
// a sequential one a window that doubles with each read, up to maxReadAhead.
func (h *fileHandle) readAhead(off int64, n int) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	sequential := off > 0 && h.next > 0 && off >= h.next-sequentialSlack && off <= h.next+sequentialSlack
	end := off + int64(n)
	switch {
	case !sequential:
		h.ahead = 0
		h.next = end
		return 0
	case h.ahead == 0:
		h.ahead = 1 << 20
	default:
		h.ahead = min(2*h.ahead, maxReadAhead)
	}
	h.next = max(h.next, end)
	return h.ahead
}
