package cache

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// TestRestartKeepsData checks that what was cached is there after the daemon restarts, with
// the same usage and the same gaps.
func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	a, b := layerDigest("a"), layerDigest("b")
	la, lb := acquire(t, s, a), acquire(t, s, b)
	f := openFile(t, la, "10", 300000)
	mustWrite(t, f, "f", 0, 100000)
	mustWrite(t, f, "f", 200000, 100000)
	g := openFile(t, lb, "10", 5000) // same key, other layer
	mustWrite(t, g, "g", 0, 5000)
	usage, usageA := s.Usage(), la.Usage()
	f.Close()
	g.Close()
	s.Close()

	s = openStore(t, dir)
	if s.Usage() != usage {
		t.Errorf("usage after restart = %d, want %d", s.Usage(), usage)
	}
	la, lb = acquire(t, s, a), acquire(t, s, b)
	if la.Usage() != usageA {
		t.Errorf("layer usage after restart = %d, want %d", la.Usage(), usageA)
	}
	f = openFile(t, la, "10", 300000)
	g = openFile(t, lb, "10", 5000)
	if got, want := f.Missing(0, 300000), []Range{{100000, 100000}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Missing after restart = %v, want %v", got, want)
	}
	mustRead(t, f, "f", 50000, 100)
	mustRead(t, f, "f", 0, 100000)
	mustRead(t, f, "f", 200000, 100000)
	mustMiss(t, f, 99999, 2)
	mustRead(t, g, "g", 0, 5000)
	// Completing the file after a restart makes it available for passthrough.
	mustWrite(t, f, "f", 100000, 100000)
	fd, err := f.OpenComplete()
	if err != nil {
		t.Fatalf("OpenComplete: %v", err)
	}
	fd.Close()
	if n := testutil.ToFloat64(s.Metrics().CheckFailures); n != 0 {
		t.Errorf("%v check failures on intact data", n)
	}
}

// TestRestartOpenCompleteChecks checks that a file complete before a restart is checked
// before it is handed out for passthrough.
func TestRestartOpenCompleteChecks(t *testing.T) {
	for _, corrupt := range []bool{false, true} {
		dir := t.TempDir()
		s := openStore(t, dir)
		f := openFile(t, acquire(t, s, layerDigest("l")), "7", 10000)
		mustWrite(t, f, "x", 0, 5000)
		mustWrite(t, f, "x", 5000, 5000)
		s.Close()
		if corrupt {
			flipByte(t, filepath.Join(s.layerDir(layerDigest("l")), "files", "7"), 7000)
		}
		s = openStore(t, dir)
		f = openFile(t, acquire(t, s, layerDigest("l")), "7", 10000)
		if !f.Complete() {
			t.Fatal("file not complete after restart")
		}
		fd, err := f.OpenComplete()
		if corrupt {
			if err == nil {
				fd.Close()
				t.Fatal("OpenComplete handed out a corrupt file")
			}
			if got, want := f.Missing(0, 10000), []Range{{5000, 5000}}; !reflect.DeepEqual(got, want) {
				t.Errorf("Missing after a failed check = %v, want %v", got, want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("OpenComplete: %v", err)
		}
		fd.Close()
	}
}

// TestRestartTornJournal cuts the journal at every byte of its last record, as a crash in the
// middle of an append would: the store opens, the earlier chunks read back, the last one is
// a miss (never wrong bytes), and it can be written again.
func TestRestartTornJournal(t *testing.T) {
	const chunk, n = 4096, 4
	dir := t.TempDir()
	s := openStore(t, dir)
	d := layerDigest("l")
	f := openFile(t, acquire(t, s, d), "42", n*chunk)
	for i := range n - 1 {
		mustWrite(t, f, "x", int64(i)*chunk, chunk)
	}
	jpath := filepath.Join(s.layerDir(d), "journal")
	before := fileSize(t, jpath)
	mustWrite(t, f, "x", (n-1)*chunk, chunk)
	s.Close()
	full, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	for cut := before; cut < int64(len(full)); cut++ {
		if err := os.WriteFile(jpath, full[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		s := openStore(t, dir)
		f := openFile(t, acquire(t, s, d), "42", n*chunk)
		mustRead(t, f, "x", 0, (n-1)*chunk)
		mustMiss(t, f, (n-1)*chunk, chunk)
		mustMiss(t, f, 0, n*chunk)
		mustWrite(t, f, "x", (n-1)*chunk, chunk)
		mustRead(t, f, "x", 0, n*chunk)
		f.Close()
		s.Close()
	}
	// And with garbage after the last record, or a journal cut inside its header.
	for _, j := range [][]byte{append(full[:len(full):len(full)], 0xff, 0, 0, 0, 1, 2, 3), full[:3], nil} {
		if err := os.WriteFile(jpath, j, 0o600); err != nil {
			t.Fatal(err)
		}
		s := openStore(t, dir)
		f := openFile(t, acquire(t, s, d), "42", n*chunk)
		if len(j) > len(full) {
			mustRead(t, f, "x", 0, n*chunk)
		} else {
			mustMiss(t, f, 0, 1)
			if s.Usage() != 0 {
				t.Errorf("usage %d with an empty journal", s.Usage())
			}
		}
		mustWrite(t, f, "x", 0, n*chunk)
		s.Close()
	}
}

// TestRestartDamagedData damages a data file behind its journal, as a crash that saved the
// record but not the data (or a bad disk) would: the damaged range reads as not cached, is
// counted, and can be fetched again; the rest is unaffected.
func TestRestartDamagedData(t *testing.T) {
	const chunk = 10000
	tests := []struct {
		name     string
		damage   func(t *testing.T, path string)
		failures float64
		lost     []Range // what is missing after the damage is found
	}{
		{
			name:     "flipped byte",
			damage:   func(t *testing.T, path string) { flipByte(t, path, chunk+1234) },
			failures: 1,
			lost:     []Range{{chunk, chunk}},
		},
		{
			name: "data never written",
			damage: func(t *testing.T, path string) {
				writeZeros(t, path, chunk, chunk)
			},
			failures: 1,
			lost:     []Range{{chunk, chunk}},
		},
		{
			name: "data file truncated",
			damage: func(t *testing.T, path string) {
				if err := os.Truncate(path, chunk); err != nil {
					t.Fatal(err)
				}
			},
			lost: []Range{{0, 3 * chunk}}, // a file of the wrong size is dropped whole
		},
		{
			name: "data file deleted",
			damage: func(t *testing.T, path string) {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			},
			lost: []Range{{0, 3 * chunk}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			d := layerDigest("l")
			s := openStore(t, dir)
			f := openFile(t, acquire(t, s, d), "9", 3*chunk)
			for i := range int64(3) {
				mustWrite(t, f, "x", i*chunk, chunk)
			}
			s.Close()
			tt.damage(t, filepath.Join(s.layerDir(d), "files", "9"))

			s = openStore(t, dir)
			f = openFile(t, acquire(t, s, d), "9", 3*chunk)
			mustMiss(t, f, chunk+100, 10)
			mustMiss(t, f, 0, 3*chunk)
			if got := testutil.ToFloat64(s.Metrics().CheckFailures); got != tt.failures {
				t.Errorf("check failures = %v, want %v", got, tt.failures)
			}
			if got := f.Missing(0, 3*chunk); !reflect.DeepEqual(got, tt.lost) {
				t.Errorf("Missing = %v, want %v", got, tt.lost)
			}
			s.Close()

			// The failure is remembered: not checked (nor counted) again at the next start.
			s = openStore(t, dir)
			f = openFile(t, acquire(t, s, d), "9", 3*chunk)
			if got := f.Missing(0, 3*chunk); !reflect.DeepEqual(got, tt.lost) {
				t.Errorf("Missing after another restart = %v, want %v", got, tt.lost)
			}
			mustMiss(t, f, 0, 3*chunk)
			if got := testutil.ToFloat64(s.Metrics().CheckFailures); got != 0 {
				t.Errorf("check failures after another restart = %v, want 0", got)
			}
			for _, r := range tt.lost {
				mustWrite(t, f, "x", r.Off, r.Len)
			}
			mustRead(t, f, "x", 0, 3*chunk)
			if got, want := s.Usage(), int64(8*blockSize); got != want {
				t.Errorf("usage = %d, want %d", got, want)
			}
			s.Close()

			// The repair survives another restart.
			s = openStore(t, dir)
			f = openFile(t, acquire(t, s, d), "9", 3*chunk)
			mustRead(t, f, "x", 0, 3*chunk)
			if got := testutil.ToFloat64(s.Metrics().CheckFailures); got != 0 {
				t.Errorf("check failures after repair = %v", got)
			}
		})
	}
}

// TestJournalStaysSmall checks that a journal does not grow without end while files are
// evicted and fetched again all day, and still says what is cached after a restart.
func TestJournalStaysSmall(t *testing.T) {
	dir := t.TempDir()
	d := layerDigest("l")
	s := openStore(t, dir, WithBudget(64<<10))
	l := acquire(t, s, d)
	keep := openFile(t, l, "keep", 1000)
	mustWrite(t, keep, "keep", 0, 1000)
	for i := range 3000 { // each write evicts the previous file: a data and a drop record
		f := openFile(t, l, "k"+string(rune('a'+i%26)), 40<<10)
		mustWrite(t, f, "x", 0, 40<<10)
		f.Close()
	}
	jpath := filepath.Join(s.layerDir(d), "journal")
	if size := fileSize(t, jpath); size > compactMin+1024 {
		t.Errorf("journal of %d bytes after 3000 evictions", size)
	}
	usage := s.Usage()
	keep.Close()
	s.Close()
	s = openStore(t, dir, WithBudget(64<<10))
	if s.Usage() != usage {
		t.Errorf("usage after restart = %d, want %d", s.Usage(), usage)
	}
	mustRead(t, openFile(t, acquire(t, s, d), "keep", 1000), "keep", 0, 1000)
}

// TestRestartCompactsJournal checks that a journal mostly made of forgotten records shrinks at
// Open and still says what is cached.
func TestRestartCompactsJournal(t *testing.T) {
	dir := t.TempDir()
	d := layerDigest("l")
	s := openStore(t, dir)
	keep := openFile(t, acquire(t, s, d), "keep", 1000)
	mustWrite(t, keep, "keep", 0, 1000)
	s.Close()
	// Records of files long gone, as a crash before a compaction would leave them.
	jpath := filepath.Join(s.layerDir(d), "journal")
	j, err := os.OpenFile(jpath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for i := range 2000 {
		key := "gone" + string(rune('a'+i%26))
		b = appendRecord(b, record{kind: kindData, key: key, size: 100, off: 0, len: 100, hash: 1})
		b = appendRecord(b, record{kind: kindDrop, key: key})
	}
	if _, err := j.Write(b); err != nil {
		t.Fatal(err)
	}
	j.Close()
	before := fileSize(t, jpath)
	s = openStore(t, dir)
	if after := fileSize(t, jpath); after*4 > before {
		t.Errorf("journal %d bytes before restart, %d after: not compacted", before, after)
	}
	if s.Usage() != blockSize {
		t.Errorf("usage after compaction = %d, want %d", s.Usage(), blockSize)
	}
	mustRead(t, openFile(t, acquire(t, s, d), "keep", 1000), "keep", 0, 1000)
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// writeZeros overwrites a range with zeroes, as if the data never reached the disk.
func writeZeros(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
	_ = unix.Fsync(int(f.Fd()))
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

// TestRestartConcurrentChecks has readers meet damaged, unchecked ranges after a restart while
// a fetcher writes them again: no read returns wrong bytes, and the file ends complete.
func TestRestartConcurrentChecks(t *testing.T) {
	const chunk, n = 16 << 10, 64
	const size = chunk * n
	dir := t.TempDir()
	d := layerDigest("l")
	s := openStore(t, dir)
	f := openFile(t, acquire(t, s, d), "5", size)
	for i := range int64(n) {
		mustWrite(t, f, "x", i*chunk, chunk)
	}
	s.Close()
	path := filepath.Join(s.layerDir(d), "files", "5")
	damaged := 0
	for i := int64(0); i < n; i += 5 {
		flipByte(t, path, i*chunk+i)
		damaged++
	}

	s = openStore(t, dir)
	l := acquire(t, s, d)
	var wg sync.WaitGroup
	for w := range 4 {
		f := openFile(t, l, "5", size)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 3))
			p := make([]byte, 2*chunk)
			for range 200 {
				off := r.Int64N(size)
				got, err := f.ReadAt(p[:1+r.IntN(len(p))], off)
				if errors.Is(err, ErrNotCached) {
					continue
				}
				if err != nil && err != io.EOF {
					t.Errorf("ReadAt: %v", err)
					return
				}
				if string(p[:got]) != string(content("x", off, int64(got))) {
					t.Errorf("ReadAt(%d) returned wrong bytes", off)
					return
				}
			}
		})
	}
	g := openFile(t, l, "5", size)
	wg.Go(func() {
		for _, i := range rand.New(rand.NewPCG(9, 9)).Perm(n) {
			off := int64(i) * chunk
			if err := g.WriteAt(content("x", off, chunk), off); err != nil {
				t.Errorf("WriteAt: %v", err)
			}
		}
	})
	wg.Wait()
	mustRead(t, g, "x", 0, size)
	if got := testutil.ToFloat64(s.Metrics().CheckFailures); got > float64(damaged) {
		t.Errorf("%v check failures for %d damaged chunks", got, damaged)
	}
}

// TestRetainSparesLayersInUse checks that garbage collection leaves a layer with a handle.
func TestRetainSparesLayersInUse(t *testing.T) {
	s := openStore(t, t.TempDir())
	used := acquire(t, s, layerDigest("used"))
	fill(t, used, "1", 1000)
	if err := s.Retain(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	mustRead(t, openFile(t, used, "1", 1000), "1", 0, 1000)
}
