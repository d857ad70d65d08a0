package fs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
)

// convertedBlobChunks converts entries as rill create does, with chunks of chunkSize (0: its
// default).
func convertedBlobChunks(t testing.TB, entries []testlayer.Entry, chunkSize int) ([]byte, convert.Layer) {
	t.Helper()
	tarBytes, err := testlayer.Tar(entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	l, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{ChunkSize: chunkSize})
	if err != nil {
		t.Fatal(err)
	}
	return blob.Bytes(), l
}

// A file read cold from start to end moves its compressed bytes over the link once: the
// read-ahead of a sequential reader, the kernel's concurrent reads and the fetches they join
// never fetch the same chunk twice.
func TestColdSequentialReadFetchesEachByteOnce(t *testing.T) {
	const size = 24 << 20
	body := testlayer.RandomBytes(41, size)
	for _, c := range []struct {
		name      string
		chunkSize int
	}{
		{"64KiB", 64 << 10},
		{"256KiB", 256 << 10},
		{"default", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			entries := []testlayer.Entry{
				testlayer.Reg("before", testlayer.RandomBytes(42, 100<<10), 0o644),
				testlayer.Reg("big", body, 0o644),
				testlayer.Reg("after", testlayer.RandomBytes(43, 100<<10), 0o644),
			}
			data, l := convertedBlobChunks(t, entries, c.chunkSize)
			// A registry a round trip away: reads overlap the way they do over a real link.
			blob := &switchableBlob{delay: 5 * time.Millisecond}
			m := mountConverted(t, data, l, blob, MountOptions{})
			var compressed int64
			for _, ch := range m.idx.Lookup("big").Chunks {
				compressed += ch.BlobEnd - ch.BlobOffset
			}

			f, err := os.Open(filepath.Join(m.mountpoint, "big"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := io.ReadAll(struct{ io.Reader }{f}) // 512-byte-aligned reads of 32 KiB..
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("sequential read: %v (or wrong bytes)", err)
			}
			moved := blob.bytes.Load()
			if ratio := float64(moved) / float64(compressed); ratio > 1.05 {
				t.Errorf("reading the file moved %d bytes in %d requests for its %d compressed bytes: %.2f×", moved, blob.reads.Load(), compressed, ratio)
			}
			t.Logf("%d bytes moved in %d requests for %d compressed bytes", moved, blob.reads.Load(), compressed)
		})
	}
}
