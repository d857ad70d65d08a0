package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/internal/testlayer"
)

// faultyBlob serves a blob through a fault: flipped bytes in a range, a stall, or errors.
type faultyBlob struct {
	data []byte
	// flipAt flips the byte at this offset in answers (when flips > 0 remain; -1 = always).
	flipAt int64
	flips  atomic.Int64
	stall  chan struct{} // reads block until closed
	reads  atomic.Int64
	// covering counts the reads that returned the byte at flipAt; spans the first of them.
	covering  atomic.Int64
	firstSpan atomic.Int64
}

func (b *faultyBlob) ReadAt(p []byte, off int64) (int, error) {
	b.reads.Add(1)
	if b.stall != nil {
		<-b.stall
	}
	if off >= int64(len(b.data)) {
		return 0, errors.New("read past the end")
	}
	n := copy(p, b.data[off:])
	if b.flipAt >= off && b.flipAt < off+int64(n) {
		if b.covering.Add(1) == 1 {
			b.firstSpan.Store(int64(n))
		}
		if left := b.flips.Load(); left != 0 {
			b.flips.Add(-1)
			p[b.flipAt-off] ^= 0x55
		}
	}
	return n, nil
}

// mountBlob mounts a converted test layer read through blob.
func mountBlob(t *testing.T, blobData []byte, tocDigest string, blob interface {
	ReadAt([]byte, int64) (int, error)
}, opts MountOptions) string {
	t.Helper()
	requireRoot(t)
	ctx := context.Background()
	toc, err := LoadTOC(ctx, bytes.NewReader(blobData), int64(len(blobData)), mustDigest(t, tocDigest), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	m, err := Mount(ctx, mnt, idx, blob, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(context.Background()) })
	return mnt
}

// A chunk whose bytes do not match the TOC is never served: the read fails with EIO after
// one retry, the failure is counted, and other files still read.
func TestCorruptChunkIsNeverServed(t *testing.T) {
	entries := []testlayer.Entry{
		testlayer.Reg("victim", testlayer.RandomBytes(7, 200<<10), 0o644),
		testlayer.Reg("bystander", []byte("fine\n"), 0o644),
	}
	data, l := convertedBlob(t, entries)
	toc, _ := LoadTOC(context.Background(), bytes.NewReader(data), int64(len(data)), l.TOCDigest, Limits{})
	idx, _ := NewIndex(toc)
	victim := idx.Root.Child("victim").Chunks[1]

	cases := []struct {
		name      string
		flips     int64
		wantErr   bool
		wantFails float64
	}{
		{"corrupted in transit once: retried, served right", 1, false, 1},
		{"corrupted every time: EIO", -1, true, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			blob := &faultyBlob{data: data, flipAt: victim.BlobOffset + (victim.BlobEnd-victim.BlobOffset)/2}
			blob.flips.Store(c.flips)
			metrics := NewMetrics()
			mnt := mountBlob(t, data, l.TOCDigest.String(), blob, MountOptions{Metrics: metrics})

			readVictim(t, filepath.Join(mnt, "victim"), entries[0].Body, c.wantErr)
			// The kernel may retry a failed read with a smaller one: each try counts.
			if n := testutil.ToFloat64(metrics.verificationFailures); n < c.wantFails || (c.wantErr && int(n)%2 != 0) || (!c.wantErr && n != c.wantFails) {
				t.Errorf("verification failures counted: %v, want %v", n, c.wantFails)
			}
			if b, err := os.ReadFile(filepath.Join(mnt, "bystander")); err != nil || string(b) != "fine\n" {
				t.Errorf("another file: %q, %v", b, err)
			}
		})
	}
}

// The same with a cache, where a miss fetches the chunk in one request with the chunks that
// follow it: a chunk that fails verification there is counted, and fetched once more only —
// alone — before the read gets EIO. Every fetch of it that fails verification is counted.
func TestCorruptChunkIsNeverServedFromASpan(t *testing.T) {
	entries := []testlayer.Entry{
		testlayer.Reg("victim", testlayer.RandomBytes(9, 200<<10), 0o644),
		testlayer.Reg("bystander", []byte("fine\n"), 0o644),
	}
	cl := newCachedLayer(t, entries)
	victim := cl.index(t).Root.Child("victim").Chunks[0] // the chunk a first read leads with

	cases := []struct {
		name      string
		flips     int64
		wantErr   bool
		wantFails float64
	}{
		{"corrupted in transit once: fetched once more, served right", 1, false, 1},
		{"corrupted every time: EIO after two fetches", -1, true, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, layer, _ := cl.openCache(t, t.TempDir())
			blob := &faultyBlob{data: cl.blob, flipAt: victim.BlobOffset + (victim.BlobEnd-victim.BlobOffset)/2}
			blob.flips.Store(c.flips)
			metrics := NewMetrics()
			mnt, _ := cl.mount(t, blob, MountOptions{Cache: layer, Metrics: metrics})

			readVictim(t, filepath.Join(mnt, "victim"), entries[0].Body, c.wantErr)
			if span := blob.firstSpan.Load(); span <= victim.BlobEnd-victim.BlobOffset {
				t.Fatalf("the first fetch of the chunk was %d bytes, not a span with the chunks after it: the test does not test spans", span)
			}
			fails, fetches := testutil.ToFloat64(metrics.verificationFailures), blob.covering.Load()
			if c.wantErr {
				// The kernel may retry a failed read with a smaller one: each try fetches the
				// chunk twice and counts both.
				if fails < c.wantFails || int(fails)%2 != 0 || float64(fetches) != fails {
					t.Errorf("%d fetches of the corrupt chunk, %v verification failures counted; want 2 of each per read tried", fetches, fails)
				}
			} else if fails != c.wantFails || fetches != 2 {
				t.Errorf("%d fetches of the chunk, %v verification failures counted; want 2 fetches, 1 failure", fetches, fails)
			}
			if b, err := os.ReadFile(filepath.Join(mnt, "bystander")); err != nil || string(b) != "fine\n" {
				t.Errorf("another file: %q, %v", b, err)
			}
		})
	}
}

// A read that the registry cannot answer gets EIO within the read timeout; nothing hangs.
func TestStalledReadTimesOut(t *testing.T) {
	entries := []testlayer.Entry{testlayer.Reg("slow", testlayer.RandomBytes(8, 10<<10), 0o644)}
	data, l := convertedBlob(t, entries)
	blob := &faultyBlob{data: data, flipAt: -1, stall: make(chan struct{})}
	defer close(blob.stall)
	mnt := mountBlob(t, data, l.TOCDigest.String(), blob, MountOptions{ReadTimeout: 300 * time.Millisecond})

	start := time.Now()
	_, err := os.ReadFile(filepath.Join(mnt, "slow"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("stalled read: %v, want EIO", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("stalled read took %s with a 300ms timeout", elapsed)
	}
	// Metadata needs no data: stat answers at once.
	if fi, err := os.Stat(filepath.Join(mnt, "slow")); err != nil || fi.Size() != 10<<10 {
		t.Fatalf("stat during a stall: %v %v", fi, err)
	}
}

// Reads at any offset and length return the file's bytes (chunk boundaries included).
func TestReadsAtEveryBoundary(t *testing.T) {
	body := testlayer.RandomBytes(9, 64<<10*3+123)
	data, l := convertedBlob(t, []testlayer.Entry{testlayer.Reg("f", body, 0o644)})
	mnt := mountBlob(t, data, l.TOCDigest.String(), bytes.NewReader(data), MountOptions{})
	f, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range []struct{ off, n int64 }{
		{0, 1}, {64<<10 - 1, 2}, {64 << 10, 64 << 10}, {100, 200 << 10}, {int64(len(body)) - 10, 100}, {int64(len(body)), 10},
	} {
		buf := make([]byte, r.n)
		n, err := f.ReadAt(buf, r.off)
		want := body[min(r.off, int64(len(body))):min(r.off+r.n, int64(len(body)))]
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("ReadAt(%d, %d): %d bytes (err %v), content differs", r.off, r.n, n, err)
		}
	}
}

// readVictim reads the file with a corrupt chunk: it must fail with EIO when the corruption
// lasts (wantErr), else read back exactly want.
func readVictim(t *testing.T, path string, want []byte, wantErr bool) {
	t.Helper()
	got, err := os.ReadFile(path)
	if wantErr {
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a corrupt chunk: err %v, %d bytes; want EIO", err, len(got))
		}
	} else if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after one corrupted transfer: err %v, equal %v", err, bytes.Equal(got, want))
	}
}
