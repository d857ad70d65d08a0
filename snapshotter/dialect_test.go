package snapshotter

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/internal/testlayer"
)

// A client that speaks the containerd.io/snapshot/remote/* dialect of other lazy-pull clients
// (no CRI labels) gets its eStargz layer streamed like a CRI pull does, and the mounted layer
// reads like the extracted one.
func TestRemoteDialectStreams(t *testing.T) {
	requireRoot(t)
	resolver, digests := newLocalResolver(t, testlayer.EveryKind())
	layer := digests[0]
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	metrics := NewMetrics()
	store, err := cache.Open(ctx, filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(resolver), WithMetrics(metrics), WithCache(store))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })

	_, err = sn.Prepare(ctx, "extract-chain-0", "", snapshots.WithLabels(map[string]string{
		"containerd.io/snapshot.ref":                      "chain-0",
		"containerd.io/snapshot/remote/stargz.reference":  "127.0.0.1:5000/app:v1",
		"containerd.io/snapshot/remote/stargz.digest":     layer.String(),
		"containerd.io/snapshot/remote/stargz.layers":     layer.String(),
		"containerd.io/snapshot/remote/stargz.toc.digest": resolver.layers[layer].conv.TOCDigest.String(),
	}))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare with the remote dialect's labels: %v, want AlreadyExists (streamed)", err)
	}
	info, err := sn.Stat(ctx, "chain-0")
	if err != nil || info.Kind != snapshots.KindCommitted || info.Labels[labelRemote] == "" {
		t.Fatalf("chain-0 after a remote-dialect Prepare: %+v, %v; want a committed streamed layer", info, err)
	}
	if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("stream", "estargz")); got != 1 {
		t.Fatalf("stream decisions counted: %v, want 1", got)
	}
	view, _ := mountView(t, ctx, sn, "view", "chain-0")
	compareDirs(t, extract(t, resolver.layers[layer].tar), view)
}
