package snapshotter

import (
	"context"
	"fmt"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/snapshotter/status"
)

// Every image layer prepared leaves a decision with its reason: streamed, pulled in full, or
// pulled in full because streaming is off.
func TestDecisionsRecordEachLayer(t *testing.T) {
	requireRoot(t)
	resolver, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("a", []byte("a\n"), 0o644)})
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	toc := resolver.layers[digests[0]].conv.TOCDigest
	if _, err := sn.Prepare(ctx, "extract-1", "", unpackLabels("chain-1", digests[0], toc)); err == nil {
		t.Fatal("the streamed layer: Prepare did not answer already exists")
	}
	other := digest.FromString("other layer")
	if _, err := sn.Prepare(ctx, "extract-2", "", unpackLabels("chain-2", other, toc)); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "rw", ""); err != nil { // not an image layer: no decision
		t.Fatal(err)
	}
	got := sn.Decisions()
	if len(got) != 2 {
		t.Fatalf("decisions %+v, want 2", got)
	}
	if d := got[0]; d.Result != "stream" || d.Reason != "estargz" || d.Layer != digests[0] || d.ImageRef != "127.0.0.1:5000/app:v1" || d.Time.IsZero() {
		t.Errorf("streamed layer: %+v", d)
	}
	if d := got[1]; d.Result != "fallback" || d.Reason != "no-artifact" || d.Layer != other || d.Error == "" {
		t.Errorf("layer pulled in full: %+v", d)
	}

	off, err := NewSnapshotter(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if _, err := off.Prepare(ctx, "extract", "", unpackLabels("chain", digests[0], toc)); err != nil {
		t.Fatal(err)
	}
	if d := off.Decisions(); len(d) != 1 || d[0].Result != "fallback" || d[0].Reason != "streaming-disabled" {
		t.Errorf("streaming off: %+v", d)
	}
}

func TestDecisionLogKeepsTheLatest(t *testing.T) {
	var l decisionLog
	for i := range maxDecisions + 88 {
		l.add(status.Decision{ImageRef: fmt.Sprint(i)})
	}
	got := l.list()
	if len(got) != maxDecisions || got[0].ImageRef != "88" || got[len(got)-1].ImageRef != fmt.Sprint(maxDecisions+87) {
		t.Fatalf("kept %d, first %s, last %s", len(got), got[0].ImageRef, got[len(got)-1].ImageRef)
	}
}
