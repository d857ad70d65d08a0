package cache

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

const kib = 1 << 10

// cached reports whether the whole file key of layer l is in the cache.
func cached(t *testing.T, l *Layer, key string, size int64) bool {
	t.Helper()
	f := openFile(t, l, key, size)
	defer f.Close()
	return f.Complete()
}

// fill writes a whole file and closes it.
func fill(t *testing.T, l *Layer, key string, size int64) {
	t.Helper()
	f := openFile(t, l, key, size)
	mustWrite(t, f, key, 0, size)
	f.Close()
}

// TestEvictLRU checks that the least recently used files go first, a read counting as a use.
func TestEvictLRU(t *testing.T) {
	s := openStore(t, t.TempDir(), WithBudget(1024*kib))
	fakeClock(s)
	l := acquire(t, s, layerDigest("l"))
	for i := range 4 {
		fill(t, l, strconv.Itoa(i), 256*kib)
	}
	f := openFile(t, l, "0", 256*kib) // 0 is read: now 1 is the oldest, then 2
	mustRead(t, f, "0", 0, 10)
	f.Close()
	if s.Usage() != 1024*kib {
		t.Fatalf("usage %d, want the full budget", s.Usage())
	}
	fill(t, l, "4", 256*kib)
	// Room for 4, plus 1/64 of the budget: 1 and 2 go.
	for key, want := range map[string]bool{"0": true, "1": false, "2": false, "3": true, "4": true} {
		if got := cached(t, l, key, 256*kib); got != want {
			t.Errorf("file %s cached = %v, want %v", key, got, want)
		}
	}
	if got := testutil.ToFloat64(s.Metrics().Evictions); got != 2 {
		t.Errorf("evictions = %v, want 2", got)
	}
	if s.Usage() > 1024*kib {
		t.Errorf("usage %d over budget", s.Usage())
	}
	if disk := diskBytes(t, s.dir+"/layers") - journalBytes(t, s.dir); disk != s.Usage() {
		t.Errorf("data files take %d bytes on disk, usage says %d", disk, s.Usage())
	}
}

// TestEvictAfterRestart checks that LRU order survives a restart (by data file mtime), and
// that a budget smaller than what is cached is enforced at Open.
func TestEvictAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	l := acquire(t, s, layerDigest("l"))
	for i := range 4 {
		fill(t, l, strconv.Itoa(i), 256*kib)
		setMtime(t, s, layerDigest("l"), strconv.Itoa(i), int64(i))
	}
	s.Close()
	s = openStore(t, dir, WithBudget(600*kib))
	if s.Usage() > 600*kib {
		t.Errorf("usage %d over the budget after Open", s.Usage())
	}
	l = acquire(t, s, layerDigest("l"))
	for key, want := range map[string]bool{"0": false, "1": false, "2": true, "3": true} {
		if got := cached(t, l, key, 256*kib); got != want {
			t.Errorf("file %s cached = %v, want %v", key, got, want)
		}
	}
}

// TestEvictSparesPinnedAndOpen checks that files of a pinned layer and open files are never
// evicted, that a write fails with ErrNoSpace when nothing else can go, and that unpinning
// makes room again.
func TestEvictSparesPinnedAndOpen(t *testing.T) {
	logger, logs := logtest.NewNullLogger()
	s := openStore(t, t.TempDir(), WithBudget(1024*kib), WithLogger(logrus.NewEntry(logger)))
	fakeClock(s)
	pinned := acquire(t, s, layerDigest("pinned"))
	pinned.Pin()
	other := acquire(t, s, layerDigest("other"))
	fill(t, pinned, "p0", 256*kib) // the oldest, but pinned
	fill(t, pinned, "p1", 256*kib)
	open := openFile(t, other, "open", 256*kib) // open: in use
	mustWrite(t, open, "open", 0, 256*kib)
	fill(t, other, "o1", 256*kib)
	fill(t, other, "o2", 256*kib) // evicts o1, the only candidate
	if cached(t, other, "o1", 256*kib) {
		t.Error("o1 not evicted")
	}
	for _, key := range []string{"p0", "p1"} {
		if !cached(t, pinned, key, 256*kib) {
			t.Errorf("pinned file %s evicted", key)
		}
	}
	mustRead(t, open, "open", 0, 256*kib)

	// Hold o2 open too: now nothing can be evicted.
	o2 := openFile(t, other, "o2", 256*kib)
	f := openFile(t, other, "big", 256*kib)
	if err := f.WriteAt(content("big", 0, 256*kib), 0); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with nothing evictable: %v, want ErrNoSpace", err)
	}
	if got := testutil.ToFloat64(s.Metrics().WriteErrors.WithLabelValues(reasonBudget)); got != 1 {
		t.Errorf("budget write errors = %v, want 1", got)
	}
	mustMiss(t, f, 0, 1)
	// The operator is told why, once (not once per refused write).
	if err := f.WriteAt(content("big", 0, 256*kib), 0); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("second write with nothing evictable: %v, want ErrNoSpace", err)
	}
	var warnings []*logrus.Entry
	for _, e := range logs.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "held by mounted layers") {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d warnings that pinned data holds the budget for two refused writes, want 1", len(warnings))
	}
	if got := warnings[0].Data["pinned_bytes"]; got != int64(512*kib) {
		t.Errorf("the warning reports %v pinned bytes, want %d", got, 512*kib)
	}
	o2.Close()
	pinned.Unpin()
	mustWrite(t, f, "big", 0, 256*kib) // evicts o2 (closed) or the unpinned files
	mustRead(t, f, "big", 0, 256*kib)
	mustRead(t, open, "open", 0, 256*kib)
	if s.Usage() > 1024*kib {
		t.Errorf("usage %d over budget", s.Usage())
	}
}

// TestReleaseUnpins checks that releasing a handle drops the pins taken through it.
func TestReleaseUnpins(t *testing.T) {
	s := openStore(t, t.TempDir(), WithBudget(512*kib))
	l, err := s.Layer(context.Background(), layerDigest("l"))
	if err != nil {
		t.Fatal(err)
	}
	l.Pin()
	fill(t, l, "a", 256*kib)
	fill(t, l, "b", 256*kib)
	l.Release()
	other := acquire(t, s, layerDigest("other"))
	fill(t, other, "c", 256*kib) // must evict a
	if got := testutil.ToFloat64(s.Metrics().Evictions); got == 0 {
		t.Error("nothing evicted after Release")
	}
}

// TestRemoveLayerFreesSpace checks on the disk itself that RemoveLayer and Retain free the
// space of the layers they delete, and only theirs.
func TestRemoveLayerFreesSpace(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	s := openStore(t, dir)
	a, b, c := layerDigest("a"), layerDigest("b"), layerDigest("c")
	held := openFile(t, acquire(t, s, a), "1", size)
	mustWrite(t, held, "a", 0, size)
	for _, d := range []digest.Digest{b, c} {
		l := acquire(t, s, d)
		fill(t, l, "1", size)
		l.Release()
	}
	if disk := diskBytes(t, dir); disk < 3*size {
		t.Fatalf("%d bytes on disk for 3 layers of %d", disk, size)
	}
	if s.Usage() != 3*size {
		t.Fatalf("usage %d, want %d", s.Usage(), 3*size)
	}

	if err := s.RemoveLayer(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	held.Close() // the data of a removed layer is freed once nothing has it open
	if disk := diskBytes(t, dir); disk >= 2*size+size/2 {
		t.Errorf("%d bytes on disk after removing one of 3 layers of %d", disk, size)
	}
	if s.Usage() != 2*size {
		t.Errorf("usage %d after RemoveLayer, want %d", s.Usage(), 2*size)
	}
	if err := s.RemoveLayer(context.Background(), layerDigest("never cached")); err != nil {
		t.Errorf("RemoveLayer of an unknown layer: %v", err)
	}

	if err := s.Retain(context.Background(), map[digest.Digest]bool{b: true}); err != nil {
		t.Fatal(err)
	}
	if disk := diskBytes(t, dir); disk >= size+size/2 {
		t.Errorf("%d bytes on disk after Retain of one layer of %d", disk, size)
	}
	if s.Usage() != size {
		t.Errorf("usage %d after Retain, want %d", s.Usage(), size)
	}
	s.Close()

	// Gone for good: a restart finds b only.
	s = openStore(t, dir)
	if s.Usage() != size {
		t.Errorf("usage %d after restart, want %d", s.Usage(), size)
	}
	mustMiss(t, openFile(t, acquire(t, s, a), "1", size), 0, 1)
	mustMiss(t, openFile(t, acquire(t, s, c), "1", size), 0, 1)
	mustRead(t, openFile(t, acquire(t, s, b), "1", size), "1", 0, size)
}

// TestRemovedLayerHandles checks what handles on a removed layer do: reads miss, writes fail
// with ErrRemoved, and a new handle starts empty without touching the old data.
func TestRemovedLayerHandles(t *testing.T) {
	s := openStore(t, t.TempDir())
	d := layerDigest("l")
	old := acquire(t, s, d)
	f := openFile(t, old, "1", 1000)
	mustWrite(t, f, "x", 0, 500)
	if err := s.RemoveLayer(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, f, 0, 10)
	if err := f.WriteAt(content("x", 500, 500), 500); !errors.Is(err, ErrRemoved) {
		t.Errorf("write to a removed layer: %v, want ErrRemoved", err)
	}
	if _, err := old.File("2", 10); !errors.Is(err, ErrRemoved) {
		t.Errorf("File of a removed layer: %v, want ErrRemoved", err)
	}
	if s.Usage() != 0 {
		t.Errorf("usage %d after removal", s.Usage())
	}
	g := openFile(t, acquire(t, s, d), "1", 1000)
	mustMiss(t, g, 0, 10)
	mustWrite(t, g, "x", 0, 1000)
	mustRead(t, g, "x", 0, 1000)
	if s.Usage() != 1000/blockSize*blockSize+blockSize {
		t.Errorf("usage %d", s.Usage())
	}
}

func setMtime(t *testing.T, s *Store, d digest.Digest, key string, sec int64) {
	t.Helper()
	path := s.layerDir(d) + "/files/" + key
	tm := time.Unix(1_000_000_000+sec, 0)
	if err := os.Chtimes(path, tm, tm); err != nil {
		t.Fatal(err)
	}
}
