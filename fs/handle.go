package fs

import (
	"context"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rillstream/rill/cache"
	"github.com/sirupsen/logrus"
)

// fileHandle is one open of a regular file. It holds the file's cached content, if the layer
// has a cache, for as long as it is open: an open cache.File is never evicted, so what a
// reader has found in the cache stays there while it reads.
type fileHandle struct {
	file   *fileNode
	cached *cache.File // nil: reads go to the blob only

	// Sequential reads grow a read-ahead window: next is where the last read ended.
	mu    sync.Mutex
	next  int64
	ahead int64
	// local is the complete cached data the kernel reads directly (passthrough).
	local *os.File
}

var (
	_ gofs.FileReader          = (*fileHandle)(nil)
	_ gofs.FileReleaser        = (*fileHandle)(nil)
	_ gofs.FilePassthroughFder = (*fileHandle)(nil)
)

// PassthroughFd hands the kernel the local data chosen at open (choosePassthrough), if any.
func (h *fileHandle) PassthroughFd() (int, bool) {
	if h.local == nil {
		return 0, false
	}
	return int(h.local.Fd()), true
}

// choosePassthrough decides, at open, whether the kernel reads this handle's file itself
// (FUSE passthrough, Linux ≥ 6.9, as root): only for a file complete in the cache — open()
// never waits for a download — and only while no handle of the inode is open in the kernel's
// cached mode: the kernel fails an open whose mode conflicts with the inode's open files (an
// mmap'd library, say) with EIO. The handle keeps the cached file open, so it is not evicted
// while the kernel reads it. go-fuse falls back silently where the kernel refuses.
func (h *fileHandle) choosePassthrough() {
	f := h.file
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.cached != nil && !f.layer.noPassthrough && f.cachedOpens == 0 && h.cached.Complete() {
		if local, err := h.cached.OpenComplete(); err == nil {
			h.local = local
			f.passOpens++
			f.layer.metrics.passthroughOpens.Inc()
			return
		}
	}
	if f.passOpens > 0 {
		// The inode is in passthrough mode and this open cannot join it: the kernel would fail
		// the open. Rare (the cached file went away meanwhile); the caller answers EIO-free by
		// reading through rill only once the passthrough opens are gone.
		f.layer.log.WithField("path", f.path).Debug("open in cached mode while passthrough opens exist")
	}
	f.cachedOpens++
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

// openHandle opens a handle on f, with its cached content when the layer has a cache. Failing
// to open the cached content only means reading without it.
func openHandle(f *fileNode) *fileHandle {
	h := &fileHandle{file: f}
	lc := f.layer.cache
	key, ok := cacheKey(f.n)
	if lc == nil || !ok {
		return h
	}
	cf, err := lc.File(key, f.n.Size)
	if err != nil {
		f.layer.metrics.cacheOpenErrors.Inc()
		f.layer.log.WithError(err).WithFields(logrus.Fields{"ino": f.ino, "key": key}).Debug("cache unavailable for this open; reading from the blob")
		return h
	}
	h.cached = cf
	return h
}

// Read serves a read of the file: from the cache where it holds the bytes, else from the
// blob (verified, then stored). It never returns unverified bytes.
func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f := h.file
	ctx, cancel := context.WithTimeout(ctx, f.layer.readTimeout)
	defer cancel()
	began := time.Now()
	n, network, err := f.layer.reader.readFileAhead(ctx, f.n, h.cached, dest, off, h.readAhead(off, len(dest)))
	source := "cache"
	if network {
		source = "network"
	}
	f.layer.metrics.readDuration.WithLabelValues(source).Observe(time.Since(began).Seconds())
	if err != nil {
		f.layer.metrics.readErrors.Inc()
		f.layer.log.WithError(err).WithFields(logrus.Fields{"ino": f.ino, "offset": off, "length": len(dest)}).Warn("read failed; answering EIO")
		return nil, syscall.EIO
	}
	if r := f.layer.recorder; r != nil {
		r.read(f.path, n)
	}
	return fuse.ReadResultData(dest[:n]), gofs.OK
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

// Release closes the handle's cached content. go-fuse calls it once the handle's reads have
// returned, so none of them uses it any more.
func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	f := h.file
	f.mu.Lock()
	if h.local != nil {
		f.passOpens--
	} else {
		f.cachedOpens--
	}
	f.mu.Unlock()
	if h.local != nil {
		h.local.Close()
	}
	if h.cached != nil {
		h.cached.Close()
	}
	return gofs.OK
}
