package cache

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

// tinyDisk mounts a 1 MiB tmpfs for the test (which runs as root) and unmounts it at the end.
func tinyDisk(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs (the cache tests run as root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDiskFull fills a tiny disk: writes fail with ErrNoSpace and are counted, what was
// stored still reads back, nothing half-written is ever served (before or after a restart),
// and writes work again once space is freed.
func TestDiskFull(t *testing.T) {
	const chunk = 64 << 10
	dir := tinyDisk(t)
	s := openStore(t, dir) // no budget: only the disk limits it
	filler := layerDigest("filler")
	fl := acquire(t, s, filler)
	fill(t, fl, "1", 256<<10)
	fl.Pin() // a mounted layer: never evicted to make room

	d := layerDigest("main")
	l := acquire(t, s, d)
	const size = 2 << 20 // larger than the disk
	f := openFile(t, l, "1", size)
	var stored int64
	var failed error
	for off := int64(0); off < size; off += chunk {
		if err := f.WriteAt(content("1", off, chunk), off); err != nil {
			failed = err
			break
		}
		stored = off + chunk
	}
	if !errors.Is(failed, ErrNoSpace) {
		t.Fatalf("writing 2 MiB to a 1 MiB disk: %v, want ErrNoSpace", failed)
	}
	if !errors.Is(failed, unix.ENOSPC) {
		t.Errorf("error %v does not say ENOSPC", failed)
	}
	if stored == 0 {
		t.Fatal("nothing could be stored")
	}
	if got := testutil.ToFloat64(s.Metrics().WriteErrors.WithLabelValues(reasonNoSpace)); got != 1 {
		t.Errorf("no_space write errors = %v, want 1", got)
	}
	mustRead(t, f, "1", 0, stored)
	mustMiss(t, f, stored, 1)
	if got := f.Missing(0, size); len(got) != 1 || got[0] != (Range{stored, size - stored}) {
		t.Errorf("Missing = %v, want [{%d %d}]", got, stored, size-stored)
	}
	// More writes keep failing cleanly; small files, too.
	for i := range 5 {
		g := openFile(t, l, "small"+strconv.Itoa(i), 100<<10)
		if err := g.WriteAt(content("s", 0, 100<<10), 0); !errors.Is(err, ErrNoSpace) {
			t.Errorf("write to a full disk: %v, want ErrNoSpace", err)
		}
		mustMiss(t, g, 0, 1)
		g.Close()
	}
	mustRead(t, f, "1", 0, stored)
	// Failed writes leave no blocks behind: the disk holds what the store counts.
	if disk := diskBytes(t, dir+"/layers") - journalBytes(t, dir); disk != s.Usage() {
		t.Errorf("data files take %d bytes, the store counts %d", disk, s.Usage())
	}

	// A restart on the full disk serves what was stored, and nothing else.
	f.Close()
	s.Close()
	s = openStore(t, dir)
	l = acquire(t, s, d)
	f = openFile(t, l, "1", size)
	mustRead(t, f, "1", 0, stored)
	mustMiss(t, f, stored, chunk)

	// Free space: the store takes writes again.
	if err := s.RemoveLayer(context.Background(), filler); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, "1", stored, chunk)
	mustRead(t, f, "1", 0, stored+chunk)
}

// A full disk is said once when it starts and once when it ends however many writes meet it,
// shown by a gauge and DiskFullSince; and data of layers that are not mounted is evicted to
// make room before a write gives up.
func TestDiskFullIsSaidAndMakesRoom(t *testing.T) {
	const chunk = 64 << 10
	dir := tinyDisk(t)
	logger, logs := logtest.NewNullLogger()
	s := openStore(t, dir, WithLogger(logrus.NewEntry(logger)))
	// Data of a layer no longer mounted (unpinned, no open file) fills a third of the disk.
	old := acquire(t, s, layerDigest("old"))
	fill(t, old, "o", 320<<10)
	pinned := acquire(t, s, layerDigest("mounted"))
	pinned.Pin()
	f := openFile(t, pinned, "1", 2<<20)
	var stored int64
	for off := int64(0); off < 2<<20; off += chunk {
		if err := f.WriteAt(content("1", off, chunk), off); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatal(err)
			}
			break
		}
		stored = off + chunk
	}
	if cached(t, old, "o", 320<<10) {
		t.Error("the data of a layer not mounted was kept while a mounted layer's writes met a full disk")
	}
	if stored < 640<<10 {
		t.Errorf("only %d KiB stored on a 1 MiB disk: nothing was evicted to make room", stored>>10)
	}
	for i := range 20 { // more writes meeting the full disk
		g := openFile(t, pinned, "more"+strconv.Itoa(i), chunk)
		if err := g.WriteAt(content("m", 0, chunk), 0); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("write to a full disk: %v", err)
		}
		g.Close()
	}
	said := func(what string) int {
		n := 0
		for _, e := range logs.AllEntries() {
			if e.Level == logrus.WarnLevel && strings.Contains(e.Message, what) {
				n++
			}
		}
		return n
	}
	if n := said("disk is full"); n != 1 {
		t.Errorf("the full disk was said %d times, want once", n)
	}
	if s.DiskFullSince().IsZero() || testutil.ToFloat64(s.Metrics().DiskFull) != 1 {
		t.Errorf("full disk: since %v, gauge %v", s.DiskFullSince(), testutil.ToFloat64(s.Metrics().DiskFull))
	}
	// Space comes back (the mounted layer is removed): said once, gauge cleared.
	f.Close()
	if err := s.RemoveLayer(context.Background(), layerDigest("mounted")); err != nil {
		t.Fatal(err)
	}
	other := acquire(t, s, layerDigest("other"))
	fill(t, other, "x", chunk)
	fill(t, other, "y", chunk)
	if n := said("has space again"); n != 1 {
		t.Errorf("the disk's space coming back was said %d times, want once", n)
	}
	if !s.DiskFullSince().IsZero() || testutil.ToFloat64(s.Metrics().DiskFull) != 0 {
		t.Errorf("after space came back: since %v, gauge %v", s.DiskFullSince(), testutil.ToFloat64(s.Metrics().DiskFull))
	}
}
