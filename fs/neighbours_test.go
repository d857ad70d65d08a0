package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
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
