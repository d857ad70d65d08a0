package fs

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/internal/testlayer"
)

// The cache's budget evicts only data that no mounted layer needs: with two layers and a
// budget smaller than both, a mounted layer's data is never evicted for the other's — the
// other's reads are served from the network, uncached, and counted — while the data of a
// layer no longer mounted is.
func TestMountedLayersAreNeverEvicted(t *testing.T) {
	layerOf := func(seed uint64) *cachedLayer {
		var entries []testlayer.Entry
		for i := range 4 {
			entries = append(entries, testlayer.Reg(fmt.Sprintf("f%d", i), testlayer.RandomBytes(seed+uint64(i), 192<<10), 0o644))
		}
		return newCachedLayer(t, entries)
	}
	a, b := layerOf(100), layerOf(200) // 768 KiB of file data each
	const budget = 1 << 20
	store, err := cache.Open(context.Background(), t.TempDir(), cache.WithBudget(budget))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })

	// mount mounts cl with a cache handle, as the snapshotter does (Mount pins it).
	mount := func(cl *cachedLayer) (*cache.Layer, string, func()) {
		h, err := store.Layer(context.Background(), cl.digest)
		if err != nil {
			t.Fatal(err)
		}
		mnt, unmount := cl.mount(t, newRegistryBlob(cl.blob), MountOptions{Cache: h})
		return h, mnt, func() { unmount(); h.Release() }
	}
	readAll := func(cl *cachedLayer, mnt string) {
		for name := range cl.entries {
			dropPageCache(t, filepath.Join(mnt, name))
			cl.mustReadFile(t, mnt, name)
		}
	}
	// complete counts the files of cl complete in the cache.
	complete := func(cl *cachedLayer, h *cache.Layer) int {
		n := 0
		for name := range cl.entries {
			node := cl.index(t).Root.Child(name)
			key, _ := cacheKey(node)
			f, err := h.File(key, node.Size)
			if err != nil {
				t.Fatal(err)
			}
			if f.Complete() {
				n++
			}
			f.Close()
		}
		return n
	}

	// B is read whole, then unmounted: its data stays, evictable.
	hb, mntB, unmountB := mount(b)
	readAll(b, mntB)
	if n := complete(b, hb); n != 4 {
		t.Fatalf("%d of B's 4 files cached after reading them", n)
	}
	unmountB()

	// A, mounted, is read whole: B's data makes room for it.
	ha, mntA, _ := mount(a)
	readAll(a, mntA)
	if n := complete(a, ha); n != 4 {
		t.Fatalf("%d of A's 4 files cached: the unmounted layer B was not evicted to make room", n)
	}
	if evicted := testutil.ToFloat64(store.Metrics().Evictions); evicted == 0 {
		t.Fatal("nothing of the unmounted layer B was evicted")
	}
	usageA := ha.Usage()

	// B mounted again and read whole while A is mounted: A is never evicted; B reads right,
	// from the network for what does not fit, and the refused writes are counted.
	refused := testutil.ToFloat64(store.Metrics().WriteErrors.WithLabelValues("budget"))
	hb, mntB, unmountB = mount(b)
	defer unmountB()
	readAll(b, mntB)
	readAll(b, mntB)
	if n := complete(a, ha); n != 4 || ha.Usage() != usageA {
		t.Fatalf("the mounted layer A lost data to B: %d of 4 files complete, %d bytes cached (was %d)", n, ha.Usage(), usageA)
	}
	if complete(b, hb) == 4 {
		t.Fatal("all of B fits beside A: the budget does not test anything")
	}
	if n := testutil.ToFloat64(store.Metrics().WriteErrors.WithLabelValues("budget")); n <= refused {
		t.Error("writes refused because mounted layers hold the budget were not counted")
	}
	if store.Usage() > budget {
		t.Errorf("cache usage %d over its budget of %d", store.Usage(), budget)
	}
}
