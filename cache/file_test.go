package cache

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRoundTrip writes ranges of a file and checks what reads back, what is missing, and
// whether the file is complete and can be opened for passthrough.
func TestRoundTrip(t *testing.T) {
	type rng = [2]int64 // offset, length
	const k = 64 << 10
	tests := []struct {
		name     string
		size     int64
		writes   []rng
		hits     []rng
		misses   []rng
		missing  []Range
		complete bool
	}{
		{
			name:     "whole file in one write",
			size:     100000,
			writes:   []rng{{0, 100000}},
			hits:     []rng{{0, 100000}, {5, 10}, {99999, 1}},
			complete: true,
		},
		{
			name:     "chunks in order",
			size:     3*k + 17,
			writes:   []rng{{0, k}, {k, k}, {2 * k, k}, {3 * k, 17}},
			hits:     []rng{{0, 3*k + 17}, {k - 10, 20}, {3 * k, 17}},
			complete: true,
		},
		{
			name:    "chunks out of order leave gaps",
			size:    10000,
			writes:  []rng{{3000, 1000}, {0, 1000}, {9000, 1000}},
			hits:    []rng{{0, 1000}, {3000, 1000}, {3500, 10}, {9000, 1000}},
			misses:  []rng{{500, 1000}, {999, 2}, {2999, 2}, {1000, 1}, {0, 10000}, {8999, 2}},
			missing: []Range{{1000, 2000}, {4000, 5000}},
		},
		{
			name:    "overlapping writes",
			size:    10000,
			writes:  []rng{{0, 1000}, {500, 1000}, {200, 100}, {1400, 600}},
			hits:    []rng{{0, 2000}, {450, 100}, {1999, 1}},
			misses:  []rng{{1999, 2}},
			missing: []Range{{2000, 8000}},
		},
		{
			name:     "a write covering earlier ones",
			size:     5000,
			writes:   []rng{{100, 10}, {4000, 1000}, {0, 5000}},
			hits:     []rng{{0, 5000}},
			complete: true,
		},
		{
			name:     "reads past the end are short",
			size:     1000,
			writes:   []rng{{0, 1000}},
			hits:     []rng{{900, 200}, {0, 4096}},
			complete: true,
		},
		{
			name:    "last partial block only",
			size:    4097,
			writes:  []rng{{4096, 1}},
			hits:    []rng{{4096, 1}, {4096, 100}},
			misses:  []rng{{4095, 2}},
			missing: []Range{{0, 4096}},
		},
		{
			name:     "empty file",
			size:     0,
			complete: true,
		},
		{
			name:    "nothing written",
			size:    12345,
			misses:  []rng{{0, 1}, {0, 12345}},
			missing: []Range{{0, 12345}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			l := acquire(t, s, layerDigest("layer"))
			f := openFile(t, l, "1234", tt.size)
			for _, w := range tt.writes {
				mustWrite(t, f, tt.name, w[0], w[1])
			}
			for _, r := range tt.hits {
				mustRead(t, f, tt.name, r[0], r[1])
			}
			for _, r := range tt.misses {
				mustMiss(t, f, r[0], r[1])
			}
			if got := f.Missing(0, tt.size); !reflect.DeepEqual(got, tt.missing) {
				t.Errorf("Missing = %v, want %v", got, tt.missing)
			}
			if got := f.Complete(); got != tt.complete {
				t.Errorf("Complete = %v, want %v", got, tt.complete)
			}
			fd, err := f.OpenComplete()
			if !tt.complete {
				if !errors.Is(err, ErrNotCached) {
					t.Fatalf("OpenComplete of a partial file: %v, want ErrNotCached", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenComplete: %v", err)
			}
			defer fd.Close()
			got, err := io.ReadAll(fd)
			if err != nil || string(got) != string(content(tt.name, 0, tt.size)) {
				t.Fatalf("passthrough descriptor: %d bytes (%v), not the file's content", len(got), err)
			}
			if _, err := fd.Write([]byte("x")); err == nil {
				t.Fatal("passthrough descriptor is writable")
			}
		})
	}
}

func TestReadPastEnd(t *testing.T) {
	s := openStore(t, t.TempDir())
	f := openFile(t, acquire(t, s, layerDigest("l")), "1", 100)
	mustWrite(t, f, "x", 0, 100)
	p := make([]byte, 50)
	if n, err := f.ReadAt(p, 80); n != 20 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 20, io.EOF", n, err)
	}
	if n, err := f.ReadAt(p, 100); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := f.ReadAt(p[:0], 100); n != 0 || err != nil {
		t.Errorf("empty ReadAt at the end = %d, %v; want 0, nil", n, err)
	}
	if _, err := f.ReadAt(p, -1); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}
}

// TestUsageCountsBlocks checks that usage is what the data takes on disk: whole blocks, each
// counted once however many writes touch it.
func TestUsageCountsBlocks(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	l := acquire(t, s, layerDigest("l"))
	f := openFile(t, l, "1", 1<<20)
	mustWrite(t, f, "x", 0, 100)
	mustWrite(t, f, "x", 100, 100)
	mustWrite(t, f, "x", 8192, 4097)
	if got, want := l.Usage(), int64(3*blockSize); got != want {
		t.Errorf("layer usage = %d, want %d", got, want)
	}
	g := openFile(t, l, "2", 10)
	mustWrite(t, g, "y", 0, 10)
	if got, want := s.Usage(), int64(4*blockSize); got != want {
		t.Errorf("store usage = %d, want %d", got, want)
	}
	if disk := diskBytes(t, dir+"/layers") - journalBytes(t, dir); disk != s.Usage() {
		t.Errorf("data files take %d bytes on disk, usage says %d", disk, s.Usage())
	}
}

func TestWriteOutsideFile(t *testing.T) {
	s := openStore(t, t.TempDir())
	f := openFile(t, acquire(t, s, layerDigest("l")), "1", 100)
	for _, w := range [][2]int64{{-1, 10}, {95, 10}, {100, 1}, {1 << 62, 1}} {
		if err := f.WriteAt(make([]byte, w[1]), w[0]); err == nil {
			t.Errorf("WriteAt(%d bytes at %d) of a 100-byte file succeeded", w[1], w[0])
		}
	}
	if got := f.Missing(0, 100); len(got) != 1 || got[0] != (Range{0, 100}) {
		t.Errorf("Missing after rejected writes = %v", got)
	}
}

// TestHostileNames checks that keys and digests that could name something outside the cache
// directory, or that are not what the FUSE layer would send, are refused.
func TestHostileNames(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	l := acquire(t, s, layerDigest("l"))
	for _, key := range []string{
		"", ".", "..", "../x", "a/b", "/etc/passwd", "a\x00b", ".hidden", "é", "a b", "a\nb",
		strings.Repeat("a", maxKeyLen+1),
	} {
		if f, err := l.File(key, 10); err == nil {
			f.Close()
			t.Errorf("File(%q) accepted", key)
		}
	}
	for _, key := range []string{"0", "123456789", "a.b-c_D", strings.Repeat("7", maxKeyLen)} {
		f, err := l.File(key, 10)
		if err != nil {
			t.Errorf("File(%q): %v", key, err)
			continue
		}
		mustWrite(t, f, key, 0, 10)
		f.Close()
	}
	for _, size := range []int64{-1, maxFileSize + 1} {
		if f, err := l.File("1", size); err == nil {
			f.Close()
			t.Errorf("File with size %d accepted", size)
		}
	}
	for _, d := range []digest.Digest{"", "sha256:../../etc", "sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", digest.Digest("sha256/" + digest.FromString("x").Encoded())} {
		if h, err := s.Layer(context.Background(), d); err == nil {
			h.Release()
			t.Errorf("Layer(%q) accepted", d)
		}
		if err := s.RemoveLayer(context.Background(), d); err == nil {
			t.Errorf("RemoveLayer(%q) accepted", d)
		}
	}
}

// TestSizeChange checks that a key reopened with another size does not serve the old bytes.
func TestSizeChange(t *testing.T) {
	s := openStore(t, t.TempDir())
	l := acquire(t, s, layerDigest("l"))
	f, err := l.File("1", 100)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, "old", 0, 100)
	if g, err := l.File("1", 200); err == nil {
		g.Close()
		t.Fatal("File with another size accepted while the file is open")
	}
	f.Close()
	g := openFile(t, l, "1", 200)
	mustMiss(t, g, 0, 100)
	if s.Usage() != 0 {
		t.Errorf("usage %d after the old data was discarded", s.Usage())
	}
	mustWrite(t, g, "new", 0, 200)
	mustRead(t, g, "new", 0, 200)
}

// TestClosedHandles checks that handles fail once closed or released.
func TestClosedHandles(t *testing.T) {
	s := openStore(t, t.TempDir())
	l, err := s.Layer(context.Background(), layerDigest("l"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File("1", 10)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, "x", 0, 10)
	f.Close()
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt on a closed File: %v", err)
	}
	if err := f.WriteAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteAt on a closed File: %v", err)
	}
	l.Release()
	if _, err := l.File("1", 10); !errors.Is(err, ErrClosed) {
		t.Errorf("File on a released Layer: %v", err)
	}
	s.Close()
	if _, err := s.Layer(context.Background(), layerDigest("l")); !errors.Is(err, ErrClosed) {
		t.Errorf("Layer on a closed Store: %v", err)
	}
}

// TestSecondProcessRefused checks that two stores cannot share a directory.
func TestSecondProcessRefused(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	if s, err := Open(context.Background(), dir, WithLogger(quiet())); err == nil {
		s.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
}

// TestConcurrentReadersWriters runs a background fetcher and on-demand writers and readers on
// the same files, under a budget that forces evictions of other files: no read ever returns
// wrong bytes, and every file ends complete.
func TestConcurrentReadersWriters(t *testing.T) {
	const (
		chunk = 16 << 10
		n     = 64 // chunks per file
		size  = n*chunk - 123
	)
	s := openStore(t, t.TempDir(), WithBudget(4*size))
	l := acquire(t, s, layerDigest("busy"))
	other := acquire(t, s, layerDigest("other"))
	keys := []string{"100", "200"}
	write := func(f *File, seed string, i int) {
		off := int64(i) * chunk
		ln := min(int64(chunk), size-off)
		if err := f.WriteAt(content(seed, off, ln), off); err != nil {
			t.Errorf("WriteAt: %v", err)
		}
	}
	var wg sync.WaitGroup
	for _, key := range keys {
		f := openFile(t, l, key, size)
		// The background fetcher, in order.
		wg.Go(func() {
			for i := range n {
				write(f, key, i)
			}
		})
		// On-demand writers, at random, overlapping the fetcher and each other.
		for w := range 2 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 1))
				for range n {
					write(f, key, r.IntN(n))
				}
			})
		}
		// Readers: a hit must be right, a miss is fine.
		for w := range 3 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 2))
				p := make([]byte, 3*chunk)
				for range 300 {
					off := r.Int64N(size)
					ln := 1 + r.Int64N(int64(len(p)))
					got, err := f.ReadAt(p[:ln], off)
					if errors.Is(err, ErrNotCached) {
						continue
					}
					if err != nil && err != io.EOF {
						t.Errorf("ReadAt: %v", err)
						return
					}
					if string(p[:got]) != string(content(key, off, int64(got))) {
						t.Errorf("ReadAt(%d, %d) returned wrong bytes", off, ln)
						return
					}
				}
			})
		}
	}
	// Meanwhile files of another layer come and go, and get evicted.
	wg.Go(func() {
		for i := range 40 {
			g, err := other.File(string(rune('a'+i%20)), size/2)
			if err != nil {
				t.Errorf("File: %v", err)
				return
			}
			if err := g.WriteAt(content("other", 0, size/2), 0); err != nil && !errors.Is(err, ErrNoSpace) {
				t.Errorf("WriteAt: %v", err)
			}
			g.Close()
		}
	})
	wg.Wait()
	for _, key := range keys {
		f := openFile(t, l, key, size)
		if !f.Complete() {
			t.Errorf("file %s incomplete: missing %v", key, f.Missing(0, size))
		}
		mustRead(t, f, key, 0, size)
	}
	if s.Usage() > 4*size {
		t.Errorf("usage %d over the budget %d", s.Usage(), 4*size)
	}
	if testutil.ToFloat64(s.Metrics().Evictions) == 0 {
		t.Error("no eviction happened: the test did not exercise eviction under load")
	}
}
