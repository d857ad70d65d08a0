package fs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/rillstream/rill/internal/testlayer"
)

// A file read from start to end costs few requests: each miss of a sequential reader fetches
// the following chunks too, in a window that grows. Random reads fetch only their chunks.
func TestSequentialReadsReadAhead(t *testing.T) {
	body := testlayer.RandomBytes(31, 40*64<<10) // 40 chunks of 64 KiB
	blob := &switchableBlob{}
	m := mountWithCache(t, []testlayer.Entry{testlayer.Reg("big", body, 0o644), testlayer.Reg("other", body[:20*64<<10], 0o644)}, blob, NewMetrics())

	before := blob.reads.Load()
	f, err := os.Open(filepath.Join(m.mountpoint, "big"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("sequential read: %v", err)
	}
	if n := blob.reads.Load() - before; n > 12 {
		t.Errorf("reading 40 chunks sequentially took %d requests", n)
	}

	// Random reads in a file larger than the neighbour window: their chunk, nothing more.
	before, bytesBefore := blob.reads.Load(), blob.bytes.Load()
	f, err = os.Open(filepath.Join(m.mountpoint, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 100)
	for _, off := range []int64{15 * 64 << 10, 3 * 64 << 10, 11 * 64 << 10} {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, body[off:off+100]) {
			t.Fatalf("random read at %d: wrong bytes", off)
		}
	}
	if fetched := blob.bytes.Load() - bytesBefore; fetched > 3*(80<<10) {
		t.Errorf("3 random reads fetched %d bytes (%d requests): more than their chunks", fetched, blob.reads.Load()-before)
	}
}
