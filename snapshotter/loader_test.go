package snapshotter

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/testlayer"
)

// readCountingResolver is a localResolver whose layers carry the TOC offset annotation
// (offset gives it; 0 leaves it out) and whose blobs count their range reads.
type readCountingResolver struct {
	*localResolver
	offset func(actual int64) int64

	mu       sync.Mutex
	reads    map[digest.Digest]int
	resolves map[digest.Digest]int
}

type readCountingBlob struct {
	Blob
	r *readCountingResolver
	d digest.Digest
}

func (b readCountingBlob) ReadAt(p []byte, off int64) (int, error) {
	b.r.mu.Lock()
	b.r.reads[b.d]++
	b.r.mu.Unlock()
	return b.Blob.ReadAt(p, off)
}

func (r *readCountingResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	rl, err := r.localResolver.Resolve(ctx, l)
	if err != nil {
		return rl, err
	}
	r.mu.Lock()
	r.resolves[l.Layer]++
	r.mu.Unlock()
	if off := r.offset(r.layers[l.Layer].conv.TOCOffset); off != 0 {
		rl.Desc.Annotations = map[string]string{artifact.AnnotationTOCOffset: strconv.FormatInt(off, 10)}
	}
	rl.Blob = readCountingBlob{Blob: rl.Blob, r: r, d: rl.Desc.Digest}
	return rl, nil
}

func (r *readCountingResolver) count(m map[digest.Digest]int, d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return m[d]
}

// threeLayers converts three layers once for the tests of the package (-count=50 -race).
func threeLayers(t *testing.T) (*localResolver, []digest.Digest) {
	t.Helper()
	threeLayersOnce.Do(func() {
		threeLayersLocal, threeLayersDigests = newLocalResolver(t,
			testlayer.EveryKind(),
			[]testlayer.Entry{testlayer.Reg("b", []byte("b\n"), 0o644)},
			testlayer.Runtime(4, 300, 0))
	})
	if threeLayersLocal == nil {
		t.Fatal("the layers could not be converted")
	}
	return threeLayersLocal, threeLayersDigests
}

var (
	threeLayersOnce    sync.Once
	threeLayersLocal   *localResolver
	threeLayersDigests []digest.Digest
)

func countReads(local *localResolver, offset func(int64) int64) *readCountingResolver {
	return &readCountingResolver{localResolver: local, offset: offset, reads: map[digest.Digest]int{}, resolves: map[digest.Digest]int{}}
}

func imageLabels(digests []digest.Digest, i int) LayerLabels {
	return LayerLabels{Target: fmt.Sprintf("chain-%d", i), ImageRef: "127.0.0.1:5000/app:v1", Manifest: digest.FromString("manifest"), Layer: digests[i], Layers: digests[i:]}
}

func testLoader(r Resolver) *layerLoader {
	return newLayerLoader(r, rillfs.Limits{}, time.Minute, newHostHealth(time.Minute, NewMetrics()))
}

// The Prepares of an image's layers, one after another as containerd makes them: the first
// loads every layer's TOC and index, in one range read per layer when the artifact annotates
// where the TOC starts, two without the annotation, and a lying annotation loads the TOC the
// footer points at.
func TestLoaderReadsEachTOCOnce(t *testing.T) {
	local, digests := threeLayers(t)
	for _, c := range []struct {
		name   string
		offset func(int64) int64
		reads  int
	}{
		{"annotated", func(off int64) int64 { return off }, 1},
		{"not annotated", func(int64) int64 { return 0 }, 2},
		{"annotated too early", func(off int64) int64 { return off - 100 }, 1},
		{"annotated too late", func(off int64) int64 { return off + 100 }, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := countReads(local, c.offset)
			ll := testLoader(r)
			for i, d := range digests {
				e, err := ll.load(context.Background(), imageLabels(digests, i))
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if e.idx == nil {
					t.Fatalf("layer %d: no index built ahead", i)
				}
				if want := r.layers[d].conv.TOCOffset; e.toc.Offset != want || e.idx.DataEnd != want {
					t.Fatalf("layer %d: TOC at %d, data ending at %d; the footer says %d", i, e.toc.Offset, e.idx.DataEnd, want)
				}
			}
			for i, d := range digests {
				blob := r.layers[d].conv.Digest
				if n := r.count(r.reads, blob); n != c.reads {
					t.Errorf("layer %d: %d range reads, want %d", i, n, c.reads)
				}
				if n := r.count(r.resolves, d); n != 1 {
					t.Errorf("layer %d: resolved %d times, want once", i, n)
				}
			}
		})
	}
}

// Pulls of the same image at once (two namespaces, two names of one image) share each TOC:
// one fetch per blob, whoever comes first and however they interleave, and each Prepare gets
// an index of its own (it changes it as it mounts the layer).
func TestConcurrentLoadsShareEachTOC(t *testing.T) {
	local, digests := threeLayers(t)
	r := countReads(local, func(off int64) int64 { return off })
	ll := testLoader(r)
	const pulls = 6
	var wg sync.WaitGroup
	indexes := make([][]*rillfs.Index, pulls)
	errs := make(chan error, pulls*len(digests))
	for p := range pulls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range digests {
				l := imageLabels(digests, i)
				if p%2 == 1 {
					l.ImageRef = "127.0.0.1:5000/app:other-name"
				}
				e, err := ll.load(context.Background(), l)
				if err != nil {
					errs <- err
					return
				}
				idx, err := e.index()
				if err != nil {
					errs <- err
					return
				}
				indexes[p] = append(indexes[p], idx)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[*rillfs.Index]bool{}
	for _, idxs := range indexes {
		for _, idx := range idxs {
			if seen[idx] {
				t.Fatal("two Prepares got the same index")
			}
			seen[idx] = true
		}
	}
	for i, d := range digests {
		if n := r.count(r.reads, r.layers[d].conv.Digest); n != 1 {
			t.Errorf("layer %d: %d range reads for %d pulls, want one", i, n, pulls)
		}
	}
}

// A layer loaded ahead whose Prepare comes late (the layers below it took long) is resolved
// again, as the image may have changed since; its TOC, the same blob's with the same digest,
// is not fetched again.
func TestLateLoadResolvesAgainButKeepsTheTOC(t *testing.T) {
	local, digests := threeLayers(t)
	r := countReads(local, func(off int64) int64 { return off })
	ll := testLoader(r)
	if _, err := ll.load(context.Background(), imageLabels(digests, 0)); err != nil {
		t.Fatal(err)
	}
	ll.mu.Lock()
	ahead := ll.layers[loadKey(imageLabels(digests, 1))]
	ll.mu.Unlock()
	<-ahead.done
	ll.mu.Lock()
	ahead.finished = ahead.finished.Add(-time.Minute)
	ll.mu.Unlock()

	e, err := ll.load(context.Background(), imageLabels(digests, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.index(); err != nil {
		t.Fatal(err)
	}
	if n := r.count(r.resolves, digests[1]); n != 2 {
		t.Errorf("the late layer was resolved %d times, want twice", n)
	}
	if n := r.count(r.reads, r.layers[digests[1]].conv.Digest); n != 1 {
		t.Errorf("%d range reads for the late layer's TOC, want one", n)
	}
}
