package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/internal/testlayer"
)

func dropAllPageCaches(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		t.Fatalf("drop the page cache: %v", err)
	}
}

// A file complete in the cache is opened with passthrough: the kernel reads the local data
// and no read reaches rill. A file only partly local is served by rill.
func TestCompleteFilesArePassedThrough(t *testing.T) {
	complete := testlayer.Reg("complete", testlayer.RandomBytes(21, 300<<10), 0o644)
	partial := testlayer.Reg("partial", testlayer.RandomBytes(22, 300<<10), 0o644)
	blob := &switchableBlob{}
	metrics := NewMetrics()
	m := mountWithCache(t, []testlayer.Entry{complete, partial}, blob, metrics)

	// Make one file complete, the other partly local (its first chunk).
	if got, err := os.ReadFile(filepath.Join(m.mountpoint, "complete")); err != nil || !bytes.Equal(got, complete.Body) {
		t.Fatalf("first read: %v", err)
	}
	f, err := os.Open(filepath.Join(m.mountpoint, "partial"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	waitReleased(t, m, "complete")

	dropAllPageCaches(t)
	servedBefore := testutil.ToFloat64(metrics.hitBytes) + testutil.ToFloat64(metrics.missBytes)
	got, err := os.ReadFile(filepath.Join(m.mountpoint, "complete"))
	if err != nil || !bytes.Equal(got, complete.Body) {
		t.Fatalf("read through passthrough: %v, equal %v", err, bytes.Equal(got, complete.Body))
	}
	if n := testutil.ToFloat64(metrics.passthroughOpens); n < 1 {
		t.Fatalf("the complete file was not opened with passthrough (%v opens)", n)
	}
	if served := testutil.ToFloat64(metrics.hitBytes) + testutil.ToFloat64(metrics.missBytes); served != servedBefore {
		t.Fatalf("reads of a passed-through file reached rill: %v bytes", served-servedBefore)
	}

	opens := testutil.ToFloat64(metrics.passthroughOpens)
	got, err = os.ReadFile(filepath.Join(m.mountpoint, "partial"))
	if err != nil || !bytes.Equal(got, partial.Body) {
		t.Fatalf("partial file: %v", err)
	}
	if testutil.ToFloat64(metrics.passthroughOpens) != opens {
		t.Fatal("a file only partly local was opened with passthrough")
	}
	if served := testutil.ToFloat64(metrics.hitBytes) + testutil.ToFloat64(metrics.missBytes); served == servedBefore {
		t.Fatal("the partly local file was not served by rill")
	}
}

// waitReleased waits until every open of path has been released: the kernel sends a file's
// release after close(2) returns, in the background, and an inode with opens in cached mode
// cannot be opened with passthrough.
func waitReleased(t *testing.T, m *Mounted, path string) {
	t.Helper()
	n := m.idx.Root
	for _, name := range strings.Split(strings.Trim(path, "/"), "/") {
		if n = n.Child(name); n == nil {
			t.Fatalf("%s: not in the layer", path)
		}
	}
	id := m.lfs.nodes.id(n)
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.lfs.io.mu.Lock()
		open := m.lfs.io.get(id, fieldCached) + m.lfs.io.get(id, fieldPass)
		m.lfs.io.mu.Unlock()
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d opens never released", path, open)
		}
		time.Sleep(time.Millisecond)
	}
}
