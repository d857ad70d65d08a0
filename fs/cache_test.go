package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/internal/testlayer"
	"golang.org/x/sys/unix"
)

// registryBlob serves a layer blob the way the registry would, and can be cut off: once down,
// every read fails. It counts reads by blob offset.
type registryBlob struct {
	data  []byte
	delay time.Duration // added to every read: makes concurrent reads overlap
	down  atomic.Bool

	mu    sync.Mutex
	reads map[int64]int // successful reads, by offset
	fails int           // reads refused while down
}

func newRegistryBlob(data []byte) *registryBlob {
	return &registryBlob{data: data, reads: map[int64]int{}}
}

func (b *registryBlob) ReadAt(p []byte, off int64) (int, error) {
	if b.down.Load() {
		b.mu.Lock()
		b.fails++
		b.mu.Unlock()
		return 0, errors.New("registry unreachable")
	}
	time.Sleep(b.delay)
	b.mu.Lock()
	b.reads[off]++
	b.mu.Unlock()
	if off >= int64(len(b.data)) {
		return 0, io.EOF
	}
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// counts returns the number of successful reads and refused ones so far.
func (b *registryBlob) counts() (reads, fails int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.reads {
		reads += n
	}
	return reads, b.fails
}

// cachedLayer is a converted test layer (64 KiB chunks) to mount with a cache.
type cachedLayer struct {
	entries map[string][]byte // regular files by name
	blob    []byte
	toc     digest.Digest
	digest  digest.Digest // the blob's digest: the cache's name for the layer
}

func newCachedLayer(t *testing.T, entries []testlayer.Entry) *cachedLayer {
	t.Helper()
	requireRoot(t)
	blob, l := convertedBlob(t, entries)
	cl := &cachedLayer{entries: map[string][]byte{}, blob: blob, toc: l.TOCDigest, digest: digest.FromBytes(blob)}
	for _, e := range entries {
		if e.Header.Typeflag == tar.TypeReg {
			cl.entries[e.Header.Name] = e.Body
		}
	}
	return cl
}

func (cl *cachedLayer) index(t *testing.T) *Index {
	t.Helper()
	toc, err := LoadTOC(context.Background(), bytes.NewReader(cl.blob), int64(len(cl.blob)), cl.toc, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// mount mounts the layer with file data read through blob; the returned function unmounts it
// (also done at the end of the test).
func (cl *cachedLayer) mount(t *testing.T, blob io.ReaderAt, opts MountOptions) (string, func()) {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(context.Background(), mnt, cl.index(t), blob, opts)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unmount := func() {
		once.Do(func() {
			if err := m.Unmount(context.Background()); err != nil {
				t.Errorf("unmount: %v", err)
			}
		})
	}
	t.Cleanup(unmount)
	return mnt, unmount
}

// openCache opens the cache in dir and acquires the layer's handle, as the snapshotter does
// for a mounted layer (Mount pins it); the returned function releases both.
func (cl *cachedLayer) openCache(t *testing.T, dir string, opts ...cache.Option) (*cache.Store, *cache.Layer, func()) {
	t.Helper()
	s, err := cache.Open(context.Background(), dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Layer(context.Background(), cl.digest)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeAll := func() {
		once.Do(func() {
			l.Release()
			s.Close()
		})
	}
	t.Cleanup(closeAll)
	return s, l, closeAll
}

// mustReadFile checks that name reads back as the layer's file of that name.
func (cl *cachedLayer) mustReadFile(t *testing.T, mnt, name string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(mnt, name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	if !bytes.Equal(got, cl.entries[name]) {
		t.Fatalf("read %s: %d bytes, content differs from the layer's %d", name, len(got), len(cl.entries[name]))
	}
}

// dropPageCache makes the kernel forget the cached pages of a file of the mount, so that its
// next read reaches the filesystem.
func dropPageCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise %s: %v", path, err)
	}
}

// Once a file has been read, it reads again with the registry gone: from the cache, not
// from the kernel's page cache (which the test drops), nor from the blob.
func TestReadsAfterTheFirstComeFromTheCache(t *testing.T) {
	big := testlayer.RandomBytes(21, 5*64<<10+777)
	cl := newCachedLayer(t, []testlayer.Entry{
		testlayer.Reg("big", big, 0o644),
		testlayer.Hardlink("big-link", "big"),
		testlayer.Reg("small", []byte("small file\n"), 0o644),
		testlayer.Reg("empty", nil, 0o644),
	})
	cl.entries["big-link"] = big
	_, layer, _ := cl.openCache(t, t.TempDir())
	blob := newRegistryBlob(cl.blob)
	metrics := NewMetrics()
	// Without passthrough, so that every read reaches rill and is counted.
	mnt, _ := cl.mount(t, blob, MountOptions{Cache: layer, Metrics: metrics, NoPassthrough: true})

	for _, name := range []string{"big", "small", "empty"} {
		cl.mustReadFile(t, mnt, name)
	}
	fetched, _ := blob.counts()
	if fetched == 0 || testutil.ToFloat64(metrics.fetchedOnDemand) == 0 {
		t.Fatalf("first reads fetched nothing from the blob")
	}
	// First reads are served from the network, or from the cache where a sequential read's
	// read-ahead stored the next chunks: every byte once.
	firstHits := testutil.ToFloat64(metrics.hitBytes)
	if served := testutil.ToFloat64(metrics.missBytes) + firstHits; served != float64(len(big)+len("small file\n")) {
		t.Errorf("bytes served on first reads: %v, want %d", served, len(big)+len("small file\n"))
	}

	blob.down.Store(true)
	for _, name := range []string{"big", "big-link", "small", "empty"} {
		dropPageCache(t, filepath.Join(mnt, name))
		cl.mustReadFile(t, mnt, name)
	}
	if _, fails := blob.counts(); fails != 0 {
		t.Errorf("reads of cached files went to the blob %d times", fails)
	}
	// Both names of the hardlink read the one cached file; each read reached rill.
	if hit, want := testutil.ToFloat64(metrics.hitBytes)-firstHits, float64(2*len(big)+len("small file\n")); hit != want {
		t.Errorf("bytes served from the cache: %v, want %v (did the reads reach the filesystem?)", hit, want)
	}
	if n := testutil.ToFloat64(metrics.cacheWriteErrors) + testutil.ToFloat64(metrics.cacheOpenErrors); n != 0 {
		t.Errorf("cache errors counted: %v", n)
	}
}

// After a restart of the daemon (unmount, cache closed and opened again from disk), what was
// read before is served without the registry; what was not gets EIO.
func TestCacheServesReadsAfterRestart(t *testing.T) {
	cl := newCachedLayer(t, []testlayer.Entry{
		testlayer.Reg("read-before", testlayer.RandomBytes(31, 150<<10), 0o644),
		// Longer than what a miss fetches along (its chunk and the neighbours that follow it,
		// up to neighbourWindow): its tail stays remote.
		testlayer.Reg("half-read", testlayer.RandomBytes(32, 8*64<<10), 0o644),
		testlayer.Reg("never-read", testlayer.RandomBytes(33, 100<<10), 0o644),
		testlayer.Reg("tiny", []byte("tiny\n"), 0o644),
	})
	dir := t.TempDir()

	_, layer, closeCache := cl.openCache(t, dir)
	mnt, unmount := cl.mount(t, newRegistryBlob(cl.blob), MountOptions{Cache: layer})
	cl.mustReadFile(t, mnt, "read-before")
	cl.mustReadFile(t, mnt, "tiny")
	f, err := os.Open(filepath.Join(mnt, "half-read"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 64<<10) // the first chunk only
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	unmount()
	closeCache()

	_, layer, _ = cl.openCache(t, dir)
	down := newRegistryBlob(cl.blob)
	down.down.Store(true)
	mnt, _ = cl.mount(t, down, MountOptions{Cache: layer, ReadTimeout: 5 * time.Second})
	cl.mustReadFile(t, mnt, "read-before")
	cl.mustReadFile(t, mnt, "tiny")
	f, err = os.Open(filepath.Join(mnt, "half-read"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 64<<10)
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, cl.entries["half-read"][:64<<10]) {
		t.Errorf("cached head of a half-read file: err %v, equal %v", err, bytes.Equal(got, cl.entries["half-read"][:64<<10]))
	}
	if _, err := f.ReadAt(got, 7*64<<10); !errors.Is(err, syscall.EIO) {
		t.Errorf("uncached tail of a half-read file with the registry down: %v, want EIO", err)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "never-read")); !errors.Is(err, syscall.EIO) {
		t.Errorf("uncached file with the registry down: %v, want EIO", err)
	}
}

// Cached data damaged on disk behind the journal's back (while the daemon was down) is never
// served: the read finds it wrong, and fetches the chunk again from the blob.
func TestCorruptCacheDataIsFetchedAgain(t *testing.T) {
	body := testlayer.RandomBytes(41, 200<<10)
	cl := newCachedLayer(t, []testlayer.Entry{testlayer.Reg("victim", body, 0o644)})
	dir := t.TempDir()
	_, layer, closeCache := cl.openCache(t, dir)
	mnt, unmount := cl.mount(t, newRegistryBlob(cl.blob), MountOptions{Cache: layer})
	cl.mustReadFile(t, mnt, "victim")
	unmount()
	closeCache()

	// Flip bytes in the second chunk of the cached data file.
	key := strconv.FormatInt(cl.index(t).Root.Child("victim").Chunks[0].BlobOffset, 10)
	path := filepath.Join(dir, "layers", cl.digest.Algorithm().String(), cl.digest.Encoded(), "files", key)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("cached data file: %v", err)
	}
	if !bytes.Equal(data, body) {
		t.Fatalf("cached data file differs from the file before the test damaged it")
	}
	for i := 100 << 10; i < 100<<10+16; i++ {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	store, layer, _ := cl.openCache(t, dir)
	blob := newRegistryBlob(cl.blob)
	blob.down.Store(true)
	metrics := NewMetrics()
	mnt, _ = cl.mount(t, blob, MountOptions{Cache: layer, Metrics: metrics, ReadTimeout: 5 * time.Second})
	// With the registry down, the damaged chunk cannot be served at all.
	if got, err := os.ReadFile(filepath.Join(mnt, "victim")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of damaged cached data with the registry down: %d bytes, err %v; want EIO", len(got), err)
	}
	if n := testutil.ToFloat64(store.Metrics().CheckFailures); n == 0 {
		t.Errorf("the damaged range was not counted as a check failure")
	}
	// With the registry back, the chunk is fetched again and served right.
	blob.down.Store(false)
	dropPageCache(t, filepath.Join(mnt, "victim"))
	cl.mustReadFile(t, mnt, "victim")
	if reads, _ := blob.counts(); reads == 0 {
		t.Errorf("the damaged chunk was not fetched again")
	}
	// ... and stored again: with the registry down once more, the whole file reads from cache.
	blob.down.Store(true)
	dropPageCache(t, filepath.Join(mnt, "victim"))
	cl.mustReadFile(t, mnt, "victim")
}

// A cache that cannot store anything (its budget is smaller than a chunk) costs fetches,
// never a read: every read is served from the network, correct.
func TestFullCacheStillServesReads(t *testing.T) {
	cl := newCachedLayer(t, []testlayer.Entry{
		testlayer.Reg("a", testlayer.RandomBytes(51, 3*64<<10), 0o644),
		testlayer.Reg("b", testlayer.RandomBytes(52, 70<<10), 0o644),
	})
	store, layer, _ := cl.openCache(t, t.TempDir(), cache.WithBudget(4096))
	blob := newRegistryBlob(cl.blob)
	metrics := NewMetrics()
	mnt, _ := cl.mount(t, blob, MountOptions{Cache: layer, Metrics: metrics})
	for pass := 0; pass < 2; pass++ {
		for _, name := range []string{"a", "b"} {
			dropPageCache(t, filepath.Join(mnt, name))
			cl.mustReadFile(t, mnt, name)
		}
	}
	if n := testutil.ToFloat64(metrics.cacheWriteErrors); n == 0 {
		t.Errorf("failed cache writes were not counted")
	}
	if n := testutil.ToFloat64(store.Metrics().WriteErrors.WithLabelValues("budget")); n == 0 {
		t.Errorf("the cache did not count its writes over budget")
	}
	if store.Usage() > 4096 {
		t.Errorf("cache usage %d over its budget", store.Usage())
	}
	if testutil.ToFloat64(metrics.hitBytes) != 0 {
		t.Errorf("bytes served from a cache that could hold nothing")
	}
}

// Readers of one large file at the same time fetch each of its chunks once: the reads that
// need a chunk already being fetched wait for it, and later ones find it in the cache.
func TestConcurrentReadersFetchEachChunkOnce(t *testing.T) {
	body := testlayer.RandomBytes(61, 40*64<<10+1234)
	cl := newCachedLayer(t, []testlayer.Entry{testlayer.Reg("large", body, 0o644)})
	_, layer, _ := cl.openCache(t, t.TempDir())
	blob := newRegistryBlob(cl.blob)
	blob.delay = 5 * time.Millisecond
	mnt, _ := cl.mount(t, blob, MountOptions{Cache: layer})

	const readers = 8
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(filepath.Join(mnt, "large"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			// Each reader its own pattern: forward or backward, in pieces of its own size,
			// starting at its own place.
			size := int64(4<<10 + r*37<<10)
			start := int64(r) * int64(len(body)) / readers
			buf := make([]byte, size)
			for i := int64(0); i < int64(len(body)); i += size {
				off := (start + i) % int64(len(body))
				if r%2 == 1 {
					off = (int64(len(body)) - 1 - off) / size * size
				}
				n, err := f.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], body[off:off+int64(n)]) {
					errs <- errors.New("content differs at offset " + strconv.FormatInt(off, 10))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	blob.mu.Lock()
	defer blob.mu.Unlock()
	for off, n := range blob.reads {
		if n > 1 {
			t.Errorf("chunk at blob offset %d fetched %d times", off, n)
		}
	}
	if len(blob.reads) == 0 {
		t.Errorf("nothing fetched")
	}
}

// While the cache cannot store anything (its budget held, as by a full disk), the chunks read
// are kept in the bounded memory buffer: a file read twice is fetched once.
func TestFullCacheKeepsReadChunksInMemory(t *testing.T) {
	cl := newCachedLayer(t, []testlayer.Entry{
		testlayer.Reg("a", testlayer.RandomBytes(61, 3*64<<10), 0o644),
		testlayer.Reg("b", testlayer.RandomBytes(62, 70<<10), 0o644),
	})
	_, layer, _ := cl.openCache(t, t.TempDir(), cache.WithBudget(4096))
	blob := newRegistryBlob(cl.blob)
	metrics := NewMetrics()
	buffer := NewChunkBuffer(1 << 20)
	mnt, unmount := cl.mount(t, blob, MountOptions{Cache: layer, Metrics: metrics, Buffer: buffer})
	for _, name := range []string{"a", "b"} {
		cl.mustReadFile(t, mnt, name)
	}
	first, _ := blob.counts()
	for _, name := range []string{"a", "b"} {
		dropPageCache(t, filepath.Join(mnt, name))
		cl.mustReadFile(t, mnt, name)
	}
	if again, _ := blob.counts(); again != first {
		t.Errorf("reading the files again fetched %d more times from the registry, want none (kept in memory)", again-first)
	}
	if testutil.ToFloat64(metrics.bufferHitBytes) == 0 {
		t.Error("no bytes counted as served from memory")
	}
	if buffer.Bytes() > 1<<20 {
		t.Errorf("the buffer holds %d bytes, over its bound", buffer.Bytes())
	}
	unmount()
	if buffer.Bytes() != 0 {
		t.Errorf("the buffer holds %d bytes of an unmounted layer", buffer.Bytes())
	}
}

// The memory buffer stays within its bound, least recently used chunks going first.
func TestChunkBufferBound(t *testing.T) {
	b := NewChunkBuffer(3 << 10)
	owner := &chunkReader{}
	for i := range 4 {
		b.put(owner, int64(i), make([]byte, 1<<10))
		if i == 2 {
			b.get(owner, 0) // 0 is used again: 1 is now the oldest
		}
	}
	if b.Bytes() != 3<<10 {
		t.Fatalf("buffer holds %d bytes, want its bound", b.Bytes())
	}
	for off, want := range map[int64]bool{0: true, 1: false, 2: true, 3: true} {
		if _, ok := b.get(owner, off); ok != want {
			t.Errorf("chunk %d kept: %v, want %v", off, ok, want)
		}
	}
	b.put(owner, 9, make([]byte, 4<<10)) // larger than the bound: not kept
	if _, ok := b.get(owner, 9); ok {
		t.Error("a chunk larger than the bound was kept")
	}
}
