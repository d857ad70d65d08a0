package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
)

// switchableBlob serves a blob, slowly if asked, and can be cut off; it counts reads.
type switchableBlob struct {
	data  []byte
	delay time.Duration
	down  atomic.Bool
	reads atomic.Int64
	bytes atomic.Int64
	// corruptOnce, when not 0, flips the byte at blob offset corruptOnce-1 in the next read
	// that covers it (a response corrupted on the way), once.
	corruptOnce atomic.Int64
}

func (b *switchableBlob) ReadAt(p []byte, off int64) (int, error) {
	b.reads.Add(1)
	time.Sleep(b.delay)
	if b.down.Load() {
		return 0, errors.New("registry unreachable")
	}
	n := copy(p, b.data[off:])
	b.bytes.Add(int64(n))
	if c := b.corruptOnce.Load() - 1; c >= off && c < off+int64(n) && b.corruptOnce.CompareAndSwap(c+1, 0) {
		p[c-off] ^= 0xff
	}

	return n, nil
}

func mountWithCache(t *testing.T, entries []testlayer.Entry, blob *switchableBlob, metrics *Metrics) *Mounted {
	t.Helper()
	return mountWithCacheOpts(t, entries, blob, MountOptions{Metrics: metrics})
}

func mountWithCacheOpts(t *testing.T, entries []testlayer.Entry, blob *switchableBlob, opts MountOptions) *Mounted {
	t.Helper()
	data, l := convertedBlob(t, entries)
	return mountConverted(t, data, l, blob, opts)
}

// mountConverted mounts a converted layer whose bytes blob serves (it sets blob.data), with a
// cache of its own.
func mountConverted(t *testing.T, data []byte, l convert.Layer, blob *switchableBlob, opts MountOptions) *Mounted {
	t.Helper()
	blob.data = data
	return mountConvertedFrom(t, data, l, blob, opts)
}

// mountConvertedFrom mounts a converted layer whose bytes blob serves, with a cache of its own.
func mountConvertedFrom(t *testing.T, data []byte, l convert.Layer, blob io.ReaderAt, opts MountOptions) *Mounted {
	t.Helper()
	requireRoot(t)
	ctx := context.Background()
	toc, err := LoadTOC(ctx, bytes.NewReader(data), int64(len(data)), l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	lc, err := store.Layer(ctx, l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Release)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	opts.Cache, opts.ReadTimeout = lc, 5*time.Second
	m, err := Mount(ctx, mnt, idx, blob, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(context.Background()) })
	return m
}

func manyFiles(n, size int) []testlayer.Entry {
	var entries []testlayer.Entry
	for i := range n {
		entries = append(entries, testlayer.Reg(fmt.Sprintf("lib/file-%03d", i), testlayer.RandomBytes(uint64(i), size), 0o644))
	}
	return entries
}

// The profile's files arrive in the cache in the background, in few coalesced requests; once
// prefetch is done they read with the registry gone, while files not in the profile do not.
func TestPrefetchFillsTheCacheInFewRequests(t *testing.T) {
	entries := manyFiles(40, 8<<10)
	blob := &switchableBlob{}
	metrics := NewMetrics()
	m := mountWithCache(t, entries, blob, metrics)
	var profile []string
	for _, e := range entries[:30] {
		profile = append(profile, "/"+e.Header.Name)
	}
	profile = append(profile, "/not/in/the/layer")
	before := blob.reads.Load()
	m.Prefetch(profile)
	select {
	case <-m.PrefetchDone():
	case <-time.After(30 * time.Second):
		t.Fatal("prefetch did not end")
	}
	if n := blob.reads.Load() - before; n > 3 {
		t.Errorf("prefetch of 30 neighbouring files took %d requests", n)
	}
	if testutil.ToFloat64(metrics.fetchedPrefetch) == 0 {
		t.Error("prefetched bytes not counted")
	}
	blob.down.Store(true)
	for i, e := range entries {
		got, err := os.ReadFile(filepath.Join(m.mountpoint, e.Header.Name))
		switch {
		case i < 30 && (err != nil || !bytes.Equal(got, e.Body)):
			t.Errorf("%s, prefetched: read with the registry gone: %v", e.Header.Name, err)
		case i >= 30 && !errors.Is(err, syscall.EIO):
			t.Errorf("%s, not prefetched: read with the registry gone: %v, want EIO", e.Header.Name, err)
		}
	}
}

// A container does not wait for prefetch: a read while prefetch runs over a slow link is
// served before prefetch ends.
func TestReadsDoNotWaitForPrefetch(t *testing.T) {
	entries := manyFiles(300, 4<<10)
	blob := &switchableBlob{delay: 150 * time.Millisecond}
	m := mountWithCache(t, entries, blob, NewMetrics())
	var profile []string
	for _, e := range entries[:299] {
		profile = append(profile, e.Header.Name)
	}
	m.Prefetch(profile) // 5 windows of requests of 150 ms, one after another
	began := time.Now()
	last := entries[299]
	got, err := os.ReadFile(filepath.Join(m.mountpoint, last.Header.Name))
	if err != nil || !bytes.Equal(got, last.Body) {
		t.Fatalf("read during prefetch: %v", err)
	}
	select {
	case <-m.PrefetchDone():
		t.Fatalf("the read (%s) returned only after prefetch ended", time.Since(began))
	default:
	}
	<-m.PrefetchDone()
}

// eStargz writers mark start-up files with a landmark; the index lists the files before it.
func TestPrioritizedFilesBeforeTheLandmark(t *testing.T) {
	entries := []testlayer.Entry{
		testlayer.Reg("bin/app", []byte("app"), 0o755),
		testlayer.Reg("lib/libapp.so", []byte("lib"), 0o644),
		testlayer.Reg(".prefetch.landmark", []byte{0xf}, 0o644),
		testlayer.Reg("share/doc", []byte("doc"), 0o644),
	}
	data, l := convertedBlob(t, entries)
	toc, err := LoadTOC(context.Background(), bytes.NewReader(data), int64(len(data)), l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(idx.Prioritized) != "[bin/app lib/libapp.so]" {
		t.Fatalf("prioritized files: %v", idx.Prioritized)
	}
	if idx.Lookup("/share/doc") == nil || idx.Lookup("share/nothing") != nil || idx.Lookup("../etc") != nil {
		t.Fatal("Lookup")
	}
}
