package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
	"golang.org/x/time/rate"
)

func originalOf(t *testing.T, entries []testlayer.Entry) Original {
	t.Helper()
	b, err := testlayer.Tar(entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	return Original{DiffID: digest.FromBytes(b), Size: int64(len(b))}
}

// The background fetch makes the whole layer local — skipping what reads and prefetch fetched
// already, so the blob's data is fetched about once in all — and verifies it against the
// original layer; then every file reads with the registry gone.
func TestCompleteFetchesTheRestOnceAndVerifies(t *testing.T) {
	entries := append(testlayer.EveryKind(), manyFiles(50, 20<<10)...)
	blob := &switchableBlob{}
	m := mountWithCache(t, entries, blob, NewMetrics())

	// Some reads and a prefetch first.
	for _, name := range []string{"etc/hostname", "big/three-and-a-half-chunks", "lib/file-007"} {
		if _, err := os.ReadFile(filepath.Join(m.mountpoint, name)); err != nil {
			t.Fatal(err)
		}
	}
	m.Prefetch([]string{"lib/file-010", "lib/file-011", "lib/file-030"})
	original := originalOf(t, entries)
	if err := m.Complete(&original); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	data := float64(m.idx.DataEnd)
	if fetched := float64(blob.bytes.Load()); fetched > 1.01*data {
		t.Errorf("fetched %.0f bytes for %.0f bytes of data: %.3fx", fetched, data, fetched/data)
	}
	blob.down.Store(true)
	for _, e := range entries {
		if e.Header.Typeflag != '0' || len(e.Body) == 0 || filepath.Base(e.Header.Name)[:4] == ".wh." {
			continue
		}
		got, err := os.ReadFile(filepath.Join(m.mountpoint, e.Header.Name))
		if err != nil || !bytes.Equal(got, e.Body) {
			t.Errorf("%s with the registry gone after Complete: %v", e.Header.Name, err)
		}
	}
}

// An artifact whose layer differs from the original by one byte streams (its chunks match its
// own TOC) and is caught once the layer is complete.
func TestCompleteCatchesALayerThatIsNotTheOriginal(t *testing.T) {
	entries := manyFiles(10, 10<<10)
	original := originalOf(t, entries)
	forged := append([]testlayer.Entry{}, entries...)
	body := append([]byte{}, forged[4].Body...)
	body[100] ^= 1
	forged[4] = testlayer.Reg(forged[4].Header.Name, body, 0o644)

	metrics := NewMetrics()
	m := mountWithCache(t, forged, &switchableBlob{}, metrics)
	if got, err := os.ReadFile(filepath.Join(m.mountpoint, forged[4].Header.Name)); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("the forged layer's own content must serve (its TOC vouches for it): %v", err)
	}
	err := m.Complete(&original)
	if !errors.Is(err, ErrLayerMismatch) {
		t.Fatalf("Complete of a layer that is not the original: %v, want ErrLayerMismatch", err)
	}
	if testutil.ToFloat64(metrics.layerMismatches) != 1 {
		t.Fatal("the mismatch is not counted")
	}
	// The same layer against its own original verifies.
	self := originalOf(t, forged)
	if err := m.Complete(&self); err != nil {
		t.Fatalf("Complete against the layer's own bytes: %v", err)
	}
}

// Unmounting stops the background fetch.
func TestUnmountStopsTheBackgroundFetch(t *testing.T) {
	entries := manyFiles(100, 200<<10) // 20 MiB: several background requests
	blob := &switchableBlob{delay: time.Second}
	m := mountWithCache(t, entries, blob, NewMetrics())
	done := make(chan error, 1)
	go func() { done <- m.Complete(nil) }()
	time.Sleep(300 * time.Millisecond)
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Complete after Unmount: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the background fetch did not stop at Unmount")
	}
}

// The background fetch keeps within its rate cap.
func TestBackgroundFetchKeepsItsRate(t *testing.T) {
	entries := manyFiles(30, 100<<10) // 3 MB, incompressible
	blob := &switchableBlob{}
	const perSecond = 1 << 20
	m := mountWithCacheOpts(t, entries, blob, MountOptions{BackgroundRate: rate.NewLimiter(perSecond, 256<<10)})
	began := time.Now()
	if err := m.Complete(nil); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(began)
	fetched := blob.bytes.Load()
	if min := time.Duration(float64(fetched-256<<10) / perSecond * 0.9 * float64(time.Second)); elapsed < min {
		t.Fatalf("fetched %d bytes in %s: faster than the cap of %d B/s allows (%s)", fetched, elapsed, perSecond, min)
	}
}

// The blob's first tar headers corrupted on the way are fetched once more, as chunks are, and
// the layer is verified: a transfer error is no alarm.
func TestCompleteFetchesCorruptHeadersAgain(t *testing.T) {
	entries := append(testlayer.EveryKind(), manyFiles(5, 20<<10)...)
	blob := &switchableBlob{}
	metrics := NewMetrics()
	m := mountWithCache(t, entries, blob, metrics)
	head := m.idx.segments()[0]
	if head.end < 8 {
		t.Fatalf("the test layer has no headers before its first chunk (%d bytes)", head.end)
	}
	blob.corruptOnce.Store(head.end - 8 + 1) // the CRC of the first gzip member
	original := originalOf(t, entries)
	if err := m.Complete(&original); err != nil {
		t.Fatalf("Complete after the first headers came corrupted once: %v, want the layer verified", err)
	}
	if blob.corruptOnce.Load() != 0 {
		t.Fatal("the test did not corrupt the headers")
	}
	if testutil.ToFloat64(metrics.layerMismatches) != 0 {
		t.Error("a corrupted transfer was counted as a layer mismatch")
	}
}

// An artifact whose bytes are the original's but whose TOC serves other metadata (here a
// setuid bit the tar does not give) is caught once the layer is complete: the same alarm as
// a diff_id mismatch.
func TestCompleteCatchesATOCThatLiesAboutMetadata(t *testing.T) {
	entries := append(testlayer.EveryKind(), testlayer.RootfsQuirks()...)
	data, l := convertedBlob(t, entries)
	toc, off, _, err := artifact.ReadTOC(bytes.NewReader(data), int64(len(data)), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range toc.Entries {
		if e.Name == "etc/empty" {
			e.Mode = 0o4755
		}
	}
	var forged bytes.Buffer
	forged.Write(data[:off])
	tocJSON, err := artifact.WriteTOCAndFooter(&forged, off, toc, 6, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.TOCDigest = digest.FromBytes(tocJSON)

	metrics := NewMetrics()
	m := mountConverted(t, forged.Bytes(), l, &switchableBlob{}, MountOptions{Metrics: metrics})
	if fi, err := os.Stat(filepath.Join(m.mountpoint, "etc/empty")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("the forged TOC's mode must serve until the layer is complete: %v %v", fi, err)
	}
	original := originalOf(t, entries)
	err = m.Complete(&original)
	if !errors.Is(err, ErrLayerMismatch) || !strings.Contains(err.Error(), `"/etc/empty"`) {
		t.Fatalf("Complete of a layer whose TOC lies: %v, want ErrLayerMismatch naming /etc/empty", err)
	}
	if testutil.ToFloat64(metrics.layerMismatches) != 1 {
		t.Fatal("the mismatch is not counted")
	}
}

// A faithful layer with every case containerd extracts in its own way verifies, metadata
// included.
func TestCompleteVerifiesTheMetadataOfAFaithfulLayer(t *testing.T) {
	entries := append(testlayer.EveryKind(), testlayer.RootfsQuirks()...)
	m := mountWithCache(t, entries, &switchableBlob{}, NewMetrics())
	original := originalOf(t, entries)
	if err := m.Complete(&original); err != nil {
		t.Fatalf("Complete: %v", err)
	}
}
