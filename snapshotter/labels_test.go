package snapshotter

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestParseLayerLabels(t *testing.T) {
	layer := digest.FromString("layer")
	next := digest.FromString("next")
	manifest := digest.FromString("manifest")
	toc := digest.FromString("toc")
	cases := []struct {
		name    string
		labels  map[string]string
		ok      bool
		wantErr string
		check   func(t *testing.T, l LayerLabels)
	}{
		{name: "ordinary prepare", labels: map[string]string{"containerd.io/gc.root": "x"}},
		{name: "unpack without image labels", labels: map[string]string{"containerd.io/snapshot.ref": "sha256:chain"}},
		{name: "CRI dialect", ok: true, labels: map[string]string{
			"containerd.io/snapshot.ref":                 "chain",
			"containerd.io/snapshot/cri.image-ref":       "127.0.0.1:5000/app:v1",
			"containerd.io/snapshot/cri.layer-digest":    layer.String(),
			"containerd.io/snapshot/cri.manifest-digest": manifest.String(),
			"containerd.io/snapshot/cri.image-layers":    layer.String() + "," + next.String(),
			"containerd.io/snapshot/stargz/toc.digest":   toc.String(),
		}, check: func(t *testing.T, l LayerLabels) {
			if l.Target != "chain" || l.ImageRef != "127.0.0.1:5000/app:v1" || l.Layer != layer || l.Manifest != manifest || l.TOCDigest != toc {
				t.Fatalf("%+v", l)
			}
			if len(l.Layers) != 2 || l.Layers[1] != next {
				t.Fatalf("layers %v", l.Layers)
			}
		}},
		{name: "remote dialect", ok: true, labels: map[string]string{
			"containerd.io/snapshot.ref":                      "chain",
			"containerd.io/snapshot/remote/stargz.reference":  "reg/app:v1",
			"containerd.io/snapshot/remote/stargz.digest":     layer.String(),
			"containerd.io/snapshot/remote/stargz.layers":     layer.String(),
			"containerd.io/snapshot/remote/stargz.toc.digest": toc.String(),
		}, check: func(t *testing.T, l LayerLabels) {
			if l.ImageRef != "reg/app:v1" || l.Layer != layer || l.TOCDigest != toc || l.Manifest != "" {
				t.Fatalf("%+v", l)
			}
		}},
		{name: "malformed layer digest", labels: map[string]string{
			"containerd.io/snapshot.ref":              "chain",
			"containerd.io/snapshot/cri.image-ref":    "reg/app:v1",
			"containerd.io/snapshot/cri.layer-digest": "sha256:nothex",
		}, wantErr: "layer digest"},
		{name: "malformed layers list", labels: map[string]string{
			"containerd.io/snapshot.ref":              "chain",
			"containerd.io/snapshot/cri.image-ref":    "reg/app:v1",
			"containerd.io/snapshot/cri.layer-digest": layer.String(),
			"containerd.io/snapshot/cri.image-layers": layer.String() + ",bogus",
		}, wantErr: "image layers"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, ok, err := ParseLayerLabels(c.labels)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || ok != c.ok {
				t.Fatalf("ok %v err %v, want ok %v", ok, err, c.ok)
			}
			if c.check != nil {
				c.check(t, l)
			}
		})
	}
}
