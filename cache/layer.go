package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Layer is a handle on the cached files of one layer, from Store.Layer. Release it when done.
// A Layer is safe for concurrent use.
type Layer struct {
	l        *layerState
	mu       sync.Mutex
	released bool
	pins     int // pins taken through this handle, dropped by Release
}

// layerState is the in-memory state of one cached layer, shared by its handles.
type layerState struct {
	s       *Store
	d       digest.Digest
	dir     *os.File // the layer's files/ directory: data files are opened relative to it
	j       *journal
	removed atomic.Bool // set, under s.mu, by RemoveLayer

	// Guarded by s.mu.
	refs  int   // open Layer handles
	pins  int   // Pin calls not yet undone
	usage int64 // bytes on disk

	// mu guards files. Lock order: l.mu, then fileState.mu, then s.mu.
	mu    sync.Mutex
	files map[string]*fileState
}

// compactMin is the journal size below which it is never compacted.
const compactMin = 64 << 10

// newLayer creates the directory of a layer not yet cached. s.mu is held.
func newLayer(s *Store, d digest.Digest) (*layerState, error) {
	dir := s.layerDir(d)
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o700); err != nil {
		return nil, err
	}
	return openLayer(s, d, 0, make(map[string]*fileState), nil)
}

// loadLayer loads a layer's state from its journal and data files. Data files that no record
// describes, or whose size disagrees with their records, are deleted; records whose data
// file is missing are forgotten. A journal mostly made of forgotten records is compacted.
func loadLayer(s *Store, d digest.Digest) (*layerState, error) {
	dir := s.layerDir(d)
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o700); err != nil {
		return nil, err
	}
	jpath := filepath.Join(dir, "journal")
	_ = os.Remove(jpath + ".tmp") // a compaction that did not finish
	b, err := os.ReadFile(jpath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	recs, valid := parseJournal(b)
	found := replay(recs)
	entries, err := os.ReadDir(filepath.Join(dir, "files"))
	if err != nil {
		return nil, err
	}
	files := make(map[string]*fileState)
	var live []record
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, "files", name)
		r := found[name]
		info, err := e.Info()
		if r == nil || err != nil || !info.Mode().IsRegular() || info.Size() != r.size {
			if err := os.RemoveAll(path); err != nil {
				return nil, err
			}
			continue
		}
		f := &fileState{key: name, size: r.size, pending: r.recs}
		for _, rec := range r.recs {
			f.present = f.present.add(rec.off, rec.end())
			f.maxPending = max(f.maxPending, rec.len)
		}
		f.usage = f.present.blocks() * blockSize
		f.lastUsed.Store(info.ModTime().UnixNano())
		files[name] = f
		live = append(live, r.recs...)
	}
	var rewrite []record
	if len(recs) > 2*len(live) && valid > compactMin {
		rewrite = live
	}
	return openLayer(s, d, int64(valid), files, rewrite)
}

// openLayer opens the directories and journal of a layer whose journal is valid up to valid
// bytes, replacing it first with the records of rewrite if there are any.
func openLayer(s *Store, d digest.Digest, valid int64, files map[string]*fileState, rewrite []record) (*layerState, error) {
	dir := s.layerDir(d)
	ldir, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if rewrite != nil {
		f, n, err := writeJournal(ldir, rewrite)
		if err != nil {
			ldir.Close()
			return nil, err
		}
		f.Close()
		valid = n
	}
	j, err := openJournal(ldir, valid) // takes ldir
	if err != nil {
		return nil, err
	}
	fdir, err := os.Open(filepath.Join(dir, "files"))
	if err != nil {
		j.close()
		return nil, err
	}
	l := &layerState{s: s, d: d, dir: fdir, j: j, files: files}
	for _, f := range files {
		f.l = l
		l.usage += f.usage
	}
	return l, nil
}

// close closes the layer's journal and directory; its files' handles close their own data
// files.
func (l *layerState) close() {
	l.j.close()
	l.dir.Close()
}

// Digest returns the layer's digest.
func (h *Layer) Digest() digest.Digest { return h.l.d }

// File returns a handle on the cached content of the layer's file with this key and size,
// creating its entry if needed. The key is chosen by the caller and stable across restarts;
// it must be 1 to 128 bytes of [A-Za-z0-9._-] not starting with a dot. Opening a key with a
// size other than the one it was cached with discards its data, unless it is open, which is
// an error. Close the File when done.
func (h *Layer) File(key string, size int64) (*File, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	if size < 0 || size > maxFileSize {
		return nil, fmt.Errorf("cache: file %s: invalid size %d", key, size)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return nil, fmt.Errorf("cache: layer %s: %w", h.l.d, ErrClosed)
	}
	l := h.l
	if l.removed.Load() {
		return nil, fmt.Errorf("cache: layer %s: %w", l.d, ErrRemoved)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[key]
	if f != nil && f.size != size {
		if f.refs > 0 {
			return nil, fmt.Errorf("cache: file %s of layer %s is open with size %d, not %d", key, l.d, f.size, size)
		}
		l.dropLocked(f)
		f = nil
	}
	if f != nil && f.refs == 0 && f.hasData() {
		if err := f.reopen(); err != nil {
			l.s.log.WithError(err).WithField("layer", l.d).WithField("key", key).Warn("cached file unreadable; dropping it")
			l.dropLocked(f)
			f = nil
		}
	}
	if f == nil {
		f = &fileState{l: l, key: key, size: size}
		f.lastUsed.Store(l.s.now())
		l.files[key] = f
	}
	f.refs++
	return &File{f: f}, nil
}

// dropLocked forgets file f and deletes its data: the file is evicted, or reused with another
// size. l.mu is held and f has no open handle.
func (l *layerState) dropLocked(f *fileState) (freed int64) {
	delete(l.files, f.key)
	err := withFD(l.dir, func(fd int) error { return unix.Unlinkat(fd, f.key, 0) })
	if err != nil && !errors.Is(err, unix.ENOENT) {
		l.s.log.WithError(err).WithField("layer", l.d).WithField("key", f.key).Warn("deleting cached file")
	}
	// Best effort: without it, the next start checks the stale records and drops them.
	_ = l.j.append(record{kind: kindDrop, key: f.key})
	f.mu.Lock()
	freed = f.usage
	f.usage = 0
	f.checked, f.present, f.pending = nil, nil, nil
	if f.fd != nil {
		f.fd.Close()
		f.fd = nil
	}
	f.mu.Unlock()
	l.s.commit(l, 0, -freed)
	return freed
}

// Pin keeps the layer's files from being evicted until Unpin (or Release). Pin a layer for as
// long as it is mounted (fs.Mount does).
func (h *Layer) Pin() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return
	}
	h.l.mu.Lock() // excludes an eviction in progress in this layer
	h.l.s.mu.Lock()
	h.l.pins++
	h.pins++
	h.l.s.mu.Unlock()
	h.l.mu.Unlock()
}

// Unpin undoes one Pin made through this handle.
func (h *Layer) Unpin() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pins == 0 {
		return
	}
	h.l.s.mu.Lock()
	h.l.pins--
	h.pins--
	h.l.s.mu.Unlock()
}

// Release gives the handle back, undoing its pins. Files opened through it stay usable until
// closed.
func (h *Layer) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return
	}
	h.released = true
	h.l.s.mu.Lock()
	h.l.pins -= h.pins
	h.pins = 0
	h.l.refs--
	h.l.s.mu.Unlock()
}

// Usage returns the bytes the layer's cached data occupies on disk.
func (h *Layer) Usage() int64 {
	h.l.s.mu.Lock()
	defer h.l.s.mu.Unlock()
	return h.l.usage
}

// PresentBytes returns how many bytes of the layer's files are cached (not rounded to blocks),
// counting only the files whose key keep accepts (nil: all).
func (h *Layer) PresentBytes(keep func(key string) bool) int64 {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	var n int64
	for key, f := range h.l.files {
		if keep != nil && !keep(key) {
			continue
		}
		f.mu.RLock()
		n += f.present.bytes()
		f.mu.RUnlock()
	}
	return n
}

// withFD runs fn with f's descriptor, which stays open for the duration even if f is closed
// concurrently.
func withFD(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
