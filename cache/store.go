package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

var (
	// ErrNotCached is returned by reads of bytes the cache does not hold (or no longer trusts).
	ErrNotCached = errors.New("cache: not cached")
	// ErrNoSpace is wrapped by writes that failed for want of space: the disk or quota is
	// full, or the store is at its budget and nothing can be evicted. The store stays usable.
	ErrNoSpace = errors.New("cache: no space")
	// ErrRemoved is wrapped by operations on a layer that RemoveLayer or Retain deleted.
	ErrRemoved = errors.New("cache: layer removed")
	// ErrClosed is wrapped by operations on a closed Store, Layer or File.
	ErrClosed = errors.New("cache: closed")
)

const (
	// blockSize is the allocation unit usage is counted in.
	blockSize = 4096
	// maxKeyLen bounds file keys.
	maxKeyLen = 128
	// maxFileSize bounds the size of a cached file (256 TiB).
	maxFileSize = 1 << 48
)

// Option configures a Store.
type Option func(*options)

type options struct {
	budget int64
	log    *logrus.Entry
}

// WithBudget bounds the bytes the cache may occupy on disk; 0 means unlimited. When a write
// would exceed it, the least recently used files of unpinned layers are evicted.
func WithBudget(bytes int64) Option {
	return func(o *options) { o.budget = max(bytes, 0) }
}

// WithLogger sets the logger (default: logrus's standard logger).
func WithLogger(l *logrus.Entry) Option {
	return func(o *options) { o.log = l }
}

// Store is the on-disk cache of layer file contents under one directory. It is safe for
// concurrent use.
type Store struct {
	dir     string
	opts    options
	log     *logrus.Entry
	metrics *Metrics
	lock    *os.File     // flock'ed: one process per directory
	now     func() int64 // clock for LRU; replaced in tests
	evictMu sync.Mutex   // one eviction pass at a time
	// budgetWarned is when the budget was last found held by pinned data (s.now); evictMu.
	budgetWarned int64
	// roomless is when makeRoom last found nothing to evict on a full disk (0: since found
	// some); evictMu.
	roomless int64
	// fullSince is when writes began to meet a full disk (s.now), 0 while they do not.
	fullSince atomic.Int64
	// fullWarned is when a full disk was last said, fullSaid whether its end is to be said.
	fullMu     sync.Mutex
	fullWarned int64
	fullSaid   bool

	// mu guards the fields below and each layerState's refs, pins and usage. It is the
	// innermost lock: never acquire another while holding it.
	mu       sync.Mutex
	layers   map[digest.Digest]*layerState
	used     int64 // bytes on disk, all layers
	reserved int64 // bytes promised to writes in progress
	closed   bool
}

// Open opens (creating it if needed) the cache in dir and loads what it holds. Journals with
// torn tails are cut back to their last good record, data files no record describes are
// deleted, and every recorded range starts unchecked: its first read verifies it.
func Open(ctx context.Context, dir string, opts ...Option) (*Store, error) {
	s := &Store{
		dir:     dir,
		metrics: newMetrics(),
		now:     func() int64 { return time.Now().UnixNano() },
		layers:  make(map[digest.Digest]*layerState),
	}
	for _, o := range opts {
		o(&s.opts)
	}
	s.log = s.opts.log
	if s.log == nil {
		s.log = logrus.NewEntry(logrus.StandardLogger())
	}
	s.log = s.log.WithField("component", "cache")
	for _, d := range []string{dir, s.path("layers"), s.path("trash")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	lock, err := os.OpenFile(s.path("lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("cache: %s is in use by another process: %w", dir, err)
	}
	s.lock = lock
	if err := s.load(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.metrics.BytesStored.Set(float64(s.used))
	if s.opts.budget > 0 && s.used > s.opts.budget {
		// The budget shrank since the last run: trim now rather than at the next write.
		if err := s.reserve(0); err == nil {
			s.unreserve(0)
		}
	}
	return s, nil
}

// load empties the trash and loads every layer directory.
func (s *Store) load(ctx context.Context) error {
	if err := removeContents(s.path("trash")); err != nil {
		s.log.WithError(err).Warn("emptying trash")
	}
	algos, err := os.ReadDir(s.path("layers"))
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	for _, a := range algos {
		hexes, err := os.ReadDir(s.path("layers", a.Name()))
		if err != nil {
			s.log.WithError(err).Warn("skipping unreadable directory")
			continue
		}
		for _, h := range hexes {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), h.Name())
			if d.Validate() != nil || !h.IsDir() {
				s.log.WithField("name", filepath.Join(a.Name(), h.Name())).Warn("removing unknown entry from the cache")
				s.trash(s.path("layers", a.Name(), h.Name()))
				continue
			}
			l, err := loadLayer(s, d)
			if err != nil {
				// A layer we cannot load is dropped, not fatal: its data is only a cache.
				s.log.WithError(err).WithField("layer", d).Warn("dropping unreadable cached layer")
				s.trash(s.layerDir(d))
				continue
			}
			s.layers[d] = l
			s.used += l.usage
		}
	}
	return nil
}

// Layer returns a handle on the cached data of layer d, creating its (empty) entry if needed.
// Release the handle when done.
func (s *Store) Layer(ctx context.Context, d digest.Digest) (*Layer, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("cache: layer %q: %w", d, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	l := s.layers[d]
	if l == nil {
		var err error
		if l, err = newLayer(s, d); err != nil {
			return nil, fmt.Errorf("cache: layer %s: %w", d, err)
		}
		s.layers[d] = l
	}
	l.refs++
	return &Layer{l: l}, nil
}

// RemoveLayer deletes the cached data of layer d. Handles still open on it keep working as an
// empty cache: reads miss and writes fail with ErrRemoved. Removing an unknown layer is not
// an error.
func (s *Store) RemoveLayer(ctx context.Context, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cache: layer %q: %w", d, err)
	}
	s.mu.Lock()
	l := s.layers[d]
	if l != nil {
		s.detachLocked(l)
	}
	// Renaming under s.mu keeps a concurrent Layer(d) from recreating the directory first.
	trashed, err := s.trashLocked(s.layerDir(d))
	s.mu.Unlock()
	if l != nil {
		l.close()
	}
	if err != nil {
		return fmt.Errorf("cache: remove layer %s: %w", d, err)
	}
	if trashed != "" {
		if err := os.RemoveAll(trashed); err != nil {
			s.log.WithError(err).WithField("layer", d).Warn("removing cached layer")
		}
	}
	return nil
}

// Retain removes every cached layer that is not in keep and has no open handle: garbage
// collection at start, when keep holds the layers of the snapshots that exist.
func (s *Store) Retain(ctx context.Context, keep map[digest.Digest]bool) error {
	s.mu.Lock()
	var drop []digest.Digest
	for d, l := range s.layers {
		if !keep[d] {
			if l.refs > 0 {
				s.log.WithField("layer", d).Warn("not removing cached layer in use")
				continue
			}
			drop = append(drop, d)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, d := range drop {
		if err := ctx.Err(); err != nil {
			return err
		}
		errs = append(errs, s.RemoveLayer(ctx, d))
	}
	return errors.Join(errs...)
}

// Usage returns the bytes the cache occupies on disk: the blocks holding recorded data (its
// journals, a few bytes per chunk, are not counted).
func (s *Store) Usage() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// Metrics returns the store's Prometheus collectors, for the daemon to register.
func (s *Store) Metrics() *Metrics { return s.metrics }

// Close closes the store's files. Data written so far survives; handles still open fail.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	layers := make([]*layerState, 0, len(s.layers))
	for _, l := range s.layers {
		layers = append(layers, l)
	}
	s.mu.Unlock()
	for _, l := range layers {
		l.close()
	}
	if s.lock != nil {
		return s.lock.Close() // releases the flock
	}
	return nil
}

// detachLocked forgets layer l and its usage. s.mu is held.
func (s *Store) detachLocked(l *layerState) {
	if l.removed.Load() {
		return
	}
	l.removed.Store(true)
	delete(s.layers, l.d)
	s.used -= l.usage
	l.usage = 0
	s.metrics.BytesStored.Set(float64(s.used))
}

// commit settles a write that reserved bytes and changed layer l's usage by delta.
func (s *Store) commit(l *layerState, reserved, delta int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved -= reserved
	if !l.removed.Load() {
		l.usage += delta
		s.used += delta
		s.metrics.BytesStored.Set(float64(s.used))
	}
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) layerDir(d digest.Digest) string {
	return s.path("layers", d.Algorithm().String(), d.Encoded())
}

// trash moves path into the trash and deletes it.
func (s *Store) trash(path string) {
	s.mu.Lock()
	t, err := s.trashLocked(path)
	s.mu.Unlock()
	if err == nil && t != "" {
		err = os.RemoveAll(t)
	}
	if err != nil {
		s.log.WithError(err).WithField("path", path).Warn("removing from cache")
	}
}

// trashLocked renames path into the trash (atomically out of the way of a restart) and
// returns its new name, or "" if it did not exist.
func (s *Store) trashLocked(path string) (string, error) {
	t := s.path("trash", strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+filepath.Base(path))
	if err := os.Rename(path, t); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	return t, nil
}

func removeContents(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// validKey checks a file key: 1 to maxKeyLen bytes of [A-Za-z0-9._-], not starting with a
// dot. Keys name files in a directory, so nothing else may get through.
func validKey(key string) error {
	if len(key) == 0 || len(key) > maxKeyLen {
		return fmt.Errorf("cache: invalid file key %q: length must be 1 to %d", key, maxKeyLen)
	}
	if key[0] == '.' {
		return fmt.Errorf("cache: invalid file key %q: starts with a dot", key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("cache: invalid file key %q: byte %#x not allowed", key, c)
		}
	}
	return nil
}
