package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/testlayer"
)

// errRegistryDown is what an unreachable registry answers.
var errRegistryDown = errors.New("dial tcp 127.0.0.1:5000: connection refused")

// outageBlob is a layer blob whose data (below dataEnd: not its TOC and footer) cannot be
// read while down is set, as when the registry is down after the layer was mounted.
type outageBlob struct {
	localBlob
	dataEnd int64
	down    *atomic.Bool
}

func (b outageBlob) ReadAt(p []byte, off int64) (int, error) {
	if b.down.Load() && off < b.dataEnd {
		return 0, errRegistryDown
	}
	return b.localBlob.ReadAt(p, off)
}

// outageResolver is an originalResolver whose blobs are outageBlobs.
type outageResolver struct {
	*originalResolver
	down *atomic.Bool
}

func (r *outageResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	rl, err := r.originalResolver.Resolve(ctx, l)
	if err != nil {
		return rl, err
	}
	layer := r.layers[l.Layer]
	toc, err := rillfs.LoadTOC(ctx, bytes.NewReader(layer.blob), int64(len(layer.blob)), layer.conv.TOCDigest, rillfs.Limits{})
	if err != nil {
		return rl, err
	}
	rl.Blob = outageBlob{localBlob: localBlob{bytes.NewReader(layer.blob)}, dataEnd: toc.Offset, down: r.down}
	return rl, nil
}

// waitUntil polls cond until it holds, or fails the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func onlyLayer(t *testing.T, sn *Snapshotter) LayerStatus {
	t.Helper()
	st := sn.Status()
	if len(st) != 1 {
		t.Fatalf("status lists %d layers, want 1: %+v", len(st), st)
	}
	return st[0]
}

// A registry outage while a layer is completed in the background only delays it: the fetch
// resumes with backoff once the registry answers, and the layer is then verified against the
// original. Meanwhile `rill status` says it is incomplete, how often it was retried, and why.
func TestBackgroundFetchResumesAfterAnOutage(t *testing.T) {
	requireRoot(t)
	local, digests := newLocalResolver(t, []testlayer.Entry{
		testlayer.Reg("a", testlayer.RandomBytes(1, 300<<10), 0o644),
		testlayer.Reg("b", testlayer.RandomBytes(2, 300<<10), 0o644),
	})
	down := &atomic.Bool{}
	down.Store(true)
	r := &outageResolver{originalResolver: &originalResolver{localResolver: local}, down: down}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	store, err := cache.Open(ctx, filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(r), WithCache(store), WithMetrics(metrics),
		WithBackgroundFetch(true, 0), WithBackgroundRetry(time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "background fetch retried during the outage", func() bool {
		return testutil.ToFloat64(metrics.backgroundRetries) >= 3
	})
	st := onlyLayer(t, sn)
	if st.Retries < 3 || !strings.Contains(st.LastError, errRegistryDown.Error()) || (st.Background != "incomplete" && st.Background != "running") {
		t.Fatalf("status during the outage: %+v, want incomplete or running, retries and the last error", st)
	}

	down.Store(false)
	waitUntil(t, 30*time.Second, "layer verified after the registry came back", func() bool {
		return testutil.ToFloat64(metrics.verifications.WithLabelValues("ok")) == 1
	})
	st = onlyLayer(t, sn)
	if st.Background != "verified" || st.Retries < 3 || st.LastError != "" || st.LocalBytes != st.Bytes {
		t.Fatalf("status after the outage: %+v, want verified, the retries counted, no error, every byte local", st)
	}
	if st.Image != "127.0.0.1:5000/app:v1" || st.Reason != "estargz" {
		t.Fatalf("status names image %q, reason %q", st.Image, st.Reason)
	}
}

// `rill status` after a restart still says why a layer streams and which image it belongs
// to, and never shows more of a layer local than it has (the cache's block rounding and the
// tar headers kept for verification are not the layer's bytes).
func TestStatusAfterRestart(t *testing.T) {
	requireRoot(t)
	entries := []testlayer.Entry{testlayer.Reg("big", testlayer.RandomBytes(3, 200<<10), 0o644)}
	for _, name := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"} {
		entries = append(entries, testlayer.Reg(name, []byte(name+"\n"), 0o644))
	}
	local, digests := newLocalResolver(t, entries)
	r := &outageResolver{originalResolver: &originalResolver{localResolver: local}, down: &atomic.Bool{}}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	store, err := cache.Open(ctx, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics), WithBackgroundFetch(true, 0))
	if err != nil {
		t.Fatal(err)
	}
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "layer verified", func() bool {
		return testutil.ToFloat64(metrics.verifications.WithLabelValues("ok")) == 1
	})
	check := func(when string) {
		st := onlyLayer(t, sn)
		if st.Reason != "estargz" || st.Image != "127.0.0.1:5000/app:v1" || strings.Contains(st.Image, "@sha256:") {
			t.Errorf("%s: reason %q, image %q", when, st.Reason, st.Image)
		}
		if st.LocalBytes != st.Bytes || st.CacheBytes < st.Bytes {
			t.Errorf("%s: %d of %d bytes local (%d in the cache), want all of them", when, st.LocalBytes, st.Bytes, st.CacheBytes)
		}
	}
	check("before the restart")
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if store, err = cache.Open(ctx, cacheDir); err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if sn, err = NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics)); err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	check("after the restart")
}
