package cache

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// File is a handle on the cached content of one regular file of a layer, from Layer.File.
// Close it when done: a file with an open handle is never evicted. A File is safe for
// concurrent use; Close must not race with the handle's other methods.
type File struct {
	f      *fileState
	closed atomic.Bool
}

// fileState is the in-memory state of one cached file, shared by its handles.
type fileState struct {
	l        *layerState
	key      string
	size     int64
	lastUsed atomic.Int64 // unix nanoseconds of the last read or write, for LRU

	refs int // open handles; guarded by l.mu

	// wmu serializes what changes the data file: writes and hole punching. Readers never take
	// it except to drop a range that failed its check. Lock order: wmu, then mu.
	wmu sync.Mutex

	mu         sync.RWMutex
	fd         *os.File // the data file, open while the file has handles and data
	checked    spans    // bytes written or verified since Open: served as they are
	present    spans    // checked plus the ranges of pending records: on disk
	pending    []record // journal records from before Open, not yet verified, by offset
	maxPending int64    // length of the longest pending record
	usage      int64    // bytes on disk: blocks touched by present
}

// Size returns the file's size.
func (h *File) Size() int64 { return h.f.size }

// Close releases the handle.
func (h *File) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	f := h.f
	f.l.mu.Lock()
	defer f.l.mu.Unlock()
	f.refs--
	if f.refs == 0 {
		f.mu.Lock()
		if f.fd != nil {
			f.fd.Close()
			f.fd = nil
		}
		f.mu.Unlock()
	}
	return nil
}

// ReadAt reads len(p) bytes at off, like io.ReaderAt: a read that reaches the end of the
// file returns io.EOF with the bytes before it. It returns ErrNotCached, having read nothing,
// unless every byte asked for is present and checked; a range recorded before a restart is
// checked against its record here, on its first read, and dropped if it does not match.
func (h *File) ReadAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, ErrClosed
	}
	f := h.f
	if off < 0 {
		return 0, fmt.Errorf("cache: read at negative offset %d", off)
	}
	if off >= f.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > f.size-off {
		p, eof = p[:f.size-off], io.EOF
	}
	end := off + int64(len(p))
	m := f.l.s.metrics
	for attempt := 0; ; attempt++ {
		if f.l.removed.Load() {
			m.MissBytes.Add(float64(len(p)))
			return 0, ErrNotCached
		}
		f.mu.RLock()
		if f.fd != nil && f.checked.covers(off, end) {
			n, err := f.fd.ReadAt(p, off)
			f.mu.RUnlock()
			if err != nil && !(err == io.EOF && n == len(p)) {
				return 0, fmt.Errorf("cache: read %s: %w", f.key, err)
			}
			f.lastUsed.Store(f.l.s.now())
			m.HitBytes.Add(float64(n))
			return n, eof
		}
		var todo []record
		if attempt == 0 && f.fd != nil && f.present.covers(off, end) {
			todo = f.pendingIn(off, end)
		}
		fd := f.fd
		f.mu.RUnlock()
		if len(todo) == 0 {
			m.MissBytes.Add(float64(len(p)))
			return 0, ErrNotCached
		}
		f.check(fd, todo)
	}
}

// pendingIn returns the pending records that overlap bytes of [off, end) not yet checked.
// f.mu is held.
func (f *fileState) pendingIn(off, end int64) []record {
	if len(f.pending) == 0 {
		return nil
	}
	var out []record
	for _, g := range f.checked.gaps(off, end) {
		// Records start in order; one overlapping g starts after g.start-maxPending.
		i := sort.Search(len(f.pending), func(i int) bool { return f.pending[i].off > g.start-f.maxPending })
		for ; i < len(f.pending) && f.pending[i].off < g.end; i++ {
			if r := f.pending[i]; r.end() > g.start && (len(out) == 0 || out[len(out)-1] != r) {
				out = append(out, r)
			}
		}
	}
	return out
}

// check verifies pending records against the bytes in the data file: those that match become
// checked, the others are dropped, their bytes punched out and counted as check failures.
func (f *fileState) check(fd *os.File, recs []record) {
	var good, bad []record
	for _, r := range recs {
		if ok, err := verify(fd, r); err == nil && ok {
			good = append(good, r)
		} else {
			bad = append(bad, r)
		}
	}
	if len(good) > 0 {
		f.mu.Lock()
		for _, r := range good {
			if f.removePending(r) {
				f.checked = f.checked.add(r.off, r.end())
			}
		}
		f.mu.Unlock()
	}
	if len(bad) == 0 {
		return
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.mu.Lock()
	var dropped []record
	for _, r := range bad {
		if f.removePending(r) {
			dropped = append(dropped, r)
		}
	}
	if len(dropped) == 0 {
		f.mu.Unlock()
		return
	}
	f.present = union(f.checked, nil) // a copy: add works in place
	for _, r := range f.pending {
		f.present = f.present.add(r.off, r.end())
	}
	delta := f.recount()
	var holes []span
	for _, r := range dropped {
		holes = append(holes, f.present.gaps(r.off, r.end())...)
	}
	f.mu.Unlock()
	// Record the failure (before any rewrite of the range, as f.wmu is held), so that the
	// next start does not check these records again. Best effort: if it is lost, it will.
	drops := make([]record, len(dropped))
	for i, r := range dropped {
		drops[i] = record{kind: kindDropRange, key: r.key, size: r.size, off: r.off, len: r.len}
	}
	_ = f.l.j.append(drops...)
	f.punch(holes)
	f.l.s.commit(f.l, 0, delta)
	f.l.s.metrics.CheckFailures.Add(float64(len(dropped)))
	f.l.s.log.WithField("layer", f.l.d).WithField("key", f.key).WithField("records", len(dropped)).
		Warn("cached data did not match its journal record; dropped")
}

// removePending removes record r from f.pending, reporting whether it was there. f.mu is held.
func (f *fileState) removePending(r record) bool {
	for i := range f.pending {
		if f.pending[i] == r {
			f.pending = append(f.pending[:i], f.pending[i+1:]...)
			return true
		}
	}
	return false
}

// recount updates f.usage from f.present and returns the change. f.mu is held.
func (f *fileState) recount() int64 {
	u := f.present.blocks() * blockSize
	delta := u - f.usage
	f.usage = u
	return delta
}

// verify reports whether the bytes of r's range in fd hash to r.hash.
func verify(fd *os.File, r record) (bool, error) {
	h := xxhash.New()
	if _, err := io.Copy(h, io.NewSectionReader(fd, r.off, r.len)); err != nil {
		return false, err
	}
	return h.Sum64() == r.hash, nil
}

// WriteAt stores p as the bytes at off. The caller has verified them (against the chunk
// digest of the layer's TOC): the cache stores and serves them as they are. Bytes already
// present and checked are not written again. The write is recorded in the layer's journal
// only after its data; if either fails, nothing of it is recorded. An error wraps ErrNoSpace
// when the disk is full or the budget is reached with nothing left to evict: serve the bytes
// from where they came and carry on.
func (h *File) WriteAt(p []byte, off int64) error {
	if h.closed.Load() {
		return ErrClosed
	}
	f := h.f
	end := off + int64(len(p))
	if off < 0 || end > f.size || end < off {
		return fmt.Errorf("cache: write of %d bytes at %d outside %s (size %d)", len(p), off, f.key, f.size)
	}
	if len(p) == 0 {
		return nil
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.l.removed.Load() {
		return fmt.Errorf("cache: write %s: %w", f.key, ErrRemoved)
	}
	s := f.l.s
	f.mu.RLock()
	todo := f.checked.gaps(off, end)
	var grow int64
	if len(todo) > 0 {
		grow = (union(f.present, todo).blocks() - f.present.blocks()) * blockSize
	}
	f.mu.RUnlock()
	f.lastUsed.Store(s.now())
	if len(todo) == 0 {
		return nil
	}
	if err := s.reserve(grow); err != nil {
		s.metrics.WriteErrors.WithLabelValues(reasonBudget).Inc()
		return fmt.Errorf("cache: write %s: %w", f.key, err)
	}
	for attempt := 0; ; attempt++ {
		recs, err := f.write(p, off, todo)
		if err == nil {
			err = f.l.j.append(recs...)
		}
		if err == nil {
			break
		}
		f.mu.RLock()
		var holes []span
		for _, g := range todo {
			holes = append(holes, f.present.gaps(g.start, g.end)...)
		}
		f.mu.RUnlock()
		f.punch(holes)
		noSpace := errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
		if noSpace && attempt == 0 && s.makeRoom(grow) {
			continue // unpinned data was evicted to make room: once more
		}
		s.unreserve(grow)
		switch {
		case noSpace:
			s.metrics.WriteErrors.WithLabelValues(reasonNoSpace).Inc()
			s.noteDiskFull(err)
			err = fmt.Errorf("%w: %w", ErrNoSpace, err)
		case errors.Is(err, errJournalClosed) || f.l.removed.Load():
			err = fmt.Errorf("%w: %w", ErrRemoved, err) // removed meanwhile: not a failure
		default:
			s.metrics.WriteErrors.WithLabelValues(reasonIO).Inc()
		}
		return fmt.Errorf("cache: write %s: %w", f.key, err)
	}
	s.noteWriteOK()
	f.mu.Lock()
	for _, g := range todo {
		f.checked = f.checked.add(g.start, g.end)
		f.present = f.present.add(g.start, g.end)
	}
	// Pending records now wholly checked are superseded.
	if len(f.pending) > 0 {
		kept := f.pending[:0]
		for _, r := range f.pending {
			if !f.checked.covers(r.off, r.end()) {
				kept = append(kept, r)
			}
		}
		f.pending = kept
	}
	delta := f.recount()
	f.mu.Unlock()
	s.commit(f.l, grow, delta)
	return nil
}

// write writes the todo parts of p (at off) to the data file and returns their records.
// f.wmu is held.
func (f *fileState) write(p []byte, off int64, todo []span) ([]record, error) {
	f.mu.Lock()
	err := f.openFD(true)
	fd := f.fd
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	recs := make([]record, 0, len(todo))
	for _, g := range todo {
		b := p[g.start-off : g.end-off]
		if _, err := fd.WriteAt(b, g.start); err != nil {
			return nil, err
		}
		recs = append(recs, record{kind: kindData, key: f.key, size: f.size, off: g.start, len: g.end - g.start, hash: xxhash.Sum64(b)})
	}
	return recs, nil
}

// hasData reports whether the file has any byte present.
func (f *fileState) hasData() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.present) > 0
}

// reopen opens the data file of a file that has data but no handle (so its descriptor was
// closed). l.mu is held.
func (f *fileState) reopen() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.openFD(false)
}

// openFD opens the data file if it is not open, creating it (sparse, of the file's size) if
// create is set. f.mu is held for writing.
func (f *fileState) openFD(create bool) error {
	if f.fd != nil {
		return nil
	}
	flags := unix.O_RDWR
	if create {
		flags |= unix.O_CREAT
		if len(f.present) == 0 {
			flags |= unix.O_TRUNC // whatever is there is not ours to keep
		}
	}
	fd, err := openAt(f.l.dir, f.key, flags)
	if err != nil {
		return fmt.Errorf("open data file: %w", err)
	}
	if create {
		fi, err := fd.Stat()
		if err == nil && fi.Size() != f.size {
			err = fd.Truncate(f.size)
		}
		if err != nil {
			fd.Close()
			return fmt.Errorf("size data file: %w", err)
		}
	}
	f.fd = fd
	return nil
}

// punch frees the whole blocks of the given ranges, which hold no present byte, so that failed
// or dropped data neither occupies the disk nor counts. f.wmu is held.
func (f *fileState) punch(holes []span) {
	f.mu.RLock()
	fd := f.fd
	f.mu.RUnlock()
	if fd == nil {
		return
	}
	for _, h := range holes {
		start := (h.start + blockSize - 1) / blockSize * blockSize
		end := h.end / blockSize * blockSize
		if h.end == f.size {
			end = h.end // the last, partial block is the file's own
		}
		if start >= end {
			continue
		}
		err := withFD(fd, func(fd int) error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
		})
		if err != nil {
			f.l.s.log.WithError(err).WithField("key", f.key).Debug("punching hole")
		}
	}
}

// Missing returns the ranges of [off, off+length) (clipped to the file) not in the cache, in
// order: what to fetch to complete it. Ranges recorded before a restart count as present.
func (h *File) Missing(off, length int64) []Range {
	f := h.f
	off = max(off, 0)
	end := min(off+max(length, 0), f.size)
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Range
	for _, g := range f.present.gaps(off, end) {
		out = append(out, Range{Off: g.start, Len: g.end - g.start})
	}
	return out
}

// Complete reports whether every byte of the file is in the cache (ranges recorded before a
// restart count, although their first read may yet find them damaged).
func (h *File) Complete() bool {
	f := h.f
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.present.covers(0, f.size)
}

// OpenComplete returns a read-only descriptor of the data file if every byte of the file is
// present and checked (it checks ranges recorded before a restart first, reading them once),
// for FUSE passthrough; else ErrNotCached. The caller closes it. Checked bytes never change,
// but keep this File open for as long as the descriptor is in use: that is what keeps the
// file from being evicted, and its space from being counted as free while still in use.
func (h *File) OpenComplete() (*os.File, error) {
	if h.closed.Load() {
		return nil, ErrClosed
	}
	f := h.f
	for attempt := 0; ; attempt++ {
		if f.l.removed.Load() {
			return nil, ErrNotCached
		}
		f.mu.RLock()
		done := f.checked.covers(0, f.size) && (f.fd != nil || f.size == 0)
		todo := f.pendingIn(0, f.size)
		ok := attempt == 0 && f.fd != nil && len(todo) > 0 && f.present.covers(0, f.size)
		fd := f.fd
		f.mu.RUnlock()
		if done {
			break
		}
		if !ok {
			return nil, ErrNotCached
		}
		f.check(fd, todo)
	}
	if f.size == 0 {
		f.wmu.Lock()
		f.mu.Lock()
		err := f.openFD(true)
		f.mu.Unlock()
		f.wmu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("cache: %s: %w", f.key, err)
		}
	}
	fd, err := openAt(f.l.dir, f.key, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("cache: open %s: %w", f.key, err)
	}
	return fd, nil
}
