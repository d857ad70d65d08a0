package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/rillstream/rill/internal/testlayer"
)

// Files that sit together in the blob are read together: reading many small neighbours costs
// a few requests, not one each, and a miss brings its neighbours into the cache.
func TestMissesFetchTheirNeighbours(t *testing.T) {
	entries := manyFiles(60, 2<<10)
	blob := &switchableBlob{}
	m := mountWithCache(t, entries, blob, NewMetrics())
	before := blob.reads.Load()
	for _, e := range entries[:30] {
		got, err := os.ReadFile(filepath.Join(m.mountpoint, e.Header.Name))
		if err != nil || !bytes.Equal(got, e.Body) {
			t.Fatalf("%s: %v", e.Header.Name, err)
		}
	}
	if n := blob.reads.Load() - before; n > 6 {
		t.Errorf("reading 30 neighbouring small files took %d requests", n)
	}
	// The neighbours of the last one read came along: readable with the registry gone.
	blob.down.Store(true)
	if got, err := os.ReadFile(filepath.Join(m.mountpoint, entries[31].Header.Name)); err != nil || !bytes.Equal(got, entries[31].Body) {
		t.Fatalf("a neighbour of the files read is not local: %v", err)
	}
}

// What a miss brings along is the files that follow it in the blob, and the rest of a small
// file; a read at random inside a large file fetches its chunk alone (reading it in places,
// the reader would pay for bytes it never uses), except at the file's end, where the files
// that follow come along.
func TestMissesInALargeFileFetchTheirChunkAlone(t *testing.T) {
	big := testlayer.RandomBytes(51, 40*64<<10) // 40 chunks of 64 KiB: larger than the window
	small := testlayer.RandomBytes(52, 3*64<<10)
	entries := []testlayer.Entry{testlayer.Reg("big", big, 0o644)}
	entries = append(entries, manyFiles(3, 2<<10)...) // lib/file-000..002 after big
	entries = append(entries, testlayer.Reg("small", small, 0o644))
	entries = append(entries, testlayer.Reg("after-small", []byte("used with small\n"), 0o644))
	blob := &switchableBlob{}
	m := mountWithCache(t, entries, blob, NewMetrics())
	chunks := m.idx.Lookup("big").Chunks

	f, err := os.Open(filepath.Join(m.mountpoint, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 100)
	for _, i := range []int{17, 5, 30} {
		c := chunks[i]
		before := blob.bytes.Load()
		if _, err := f.ReadAt(buf, c.Offset); err != nil || !bytes.Equal(buf, big[c.Offset:c.Offset+100]) {
			t.Fatalf("read in chunk %d: %v (or wrong bytes)", i, err)
		}
		if got, want := blob.bytes.Load()-before, c.BlobEnd-c.BlobOffset; got != want {
			t.Errorf("a random read in chunk %d of a large file fetched %d bytes, want its chunk's %d", i, got, want)
		}
	}
	// A read across chunks costs one request, not one per chunk.
	span := make([]byte, 100<<10)
	before := blob.reads.Load()
	if _, err := f.ReadAt(span, chunks[24].Offset+32<<10); err != nil || !bytes.Equal(span, big[chunks[24].Offset+32<<10:][:len(span)]) {
		t.Fatalf("read across chunks 24 and 25: %v (or wrong bytes)", err)
	}
	if n := blob.reads.Load() - before; n != 1 {
		t.Errorf("a read across two chunks took %d requests", n)
	}
	// A small file of several chunks: a miss at its start brings the rest of it, and the file
	// after it.
	if _, err := readAt(filepath.Join(m.mountpoint, "small"), buf[:1], 0); err != nil {
		t.Fatal(err)
	}
	// The end of the large file: the small files that follow it come along.
	last := chunks[len(chunks)-1]
	if _, err := f.ReadAt(buf[:1], last.Offset); err != nil {
		t.Fatal(err)
	}
	blob.down.Store(true)
	for _, e := range entries[1:] {
		if got, err := os.ReadFile(filepath.Join(m.mountpoint, e.Header.Name)); err != nil || !bytes.Equal(got, e.Body) {
			t.Errorf("%s did not come along with the miss before it: %v", e.Header.Name, err)
		}
	}
	// Nothing else of the large file did.
	if _, err := f.ReadAt(buf, chunks[18].Offset); err == nil {
		t.Error("a chunk after one read at random came along")
	}
}

func readAt(path string, p []byte, off int64) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(p, off)
}
