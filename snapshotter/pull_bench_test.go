package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/benchlayer"
	"github.com/rillstream/rill/snapshotter/status"
	"github.com/sirupsen/logrus"
)

// linkBlob is a layer blob behind a link: each range read costs a round trip and the time its
// bytes take at the link's rate.
type linkBlob struct {
	Blob
	rtt  time.Duration
	rate float64 // bytes per second
}

func (b linkBlob) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(b.rtt + time.Duration(float64(len(p))/b.rate*float64(time.Second)))
	return b.Blob.ReadAt(p, off)
}

// benchResolver streams benchlayer layers over a link, their descriptors annotated as a
// streaming artifact's are (annotate) or without the TOC offset.
type benchResolver struct {
	layers   map[digest.Digest]benchlayer.Layer // by the original layer's digest
	annotate bool
	rtt      time.Duration
	rate     float64
}

func (r *benchResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	layer, ok := r.layers[l.Layer]
	if !ok {
		return RemoteLayer{}, NotStreamable("no-artifact")
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: layer.Conv.Digest, Size: layer.Conv.Size}
	if r.annotate {
		desc.Annotations = layer.Conv.Annotations(l.Layer)
	} else {
		desc.Annotations = map[string]string{artifact.AnnotationTOCDigest: layer.Conv.TOCDigest.String()}
	}
	blob, _ := r.OpenBlob(ctx, l.ImageRef, desc)
	return RemoteLayer{Ref: l.ImageRef, Desc: desc, TOCDigest: layer.Conv.TOCDigest, Reason: status.ReasonBound, Blob: blob}, nil
}

func (r *benchResolver) OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor) (Blob, error) {
	for _, l := range r.layers {
		if l.Conv.Digest == desc.Digest {
			return linkBlob{Blob: localBlob{bytes.NewReader(l.Blob)}, rtt: r.rtt, rate: r.rate}, nil
		}
	}
	return nil, errdefs.ErrNotFound
}

// BenchmarkPull is the pull step of an image of three layers (34,000, 5,600 and 1,200 TOC
// entries, like the Python image of issue 13): containerd's Prepare of each layer, one after
// another, until the last is streamed, over a link of 20 ms round trips and 100 Mbit/s
// (link) or over none (local: the CPU time). Root only (FUSE mounts).
//
//	go test ./snapshotter/ -run '^$' -bench Pull -benchtime 5x
func BenchmarkPull(b *testing.B) {
	if os.Getuid() != 0 {
		b.Skip("mounts FUSE: root only")
	}
	level := log.GetLevel()
	log.SetLevel("warn") // a line per layer streamed
	defer log.L.Logger.SetLevel(logrus.Level(level))
	var layers []benchlayer.Layer
	for _, spec := range [][3]int{{1, 30_000, 32}, {2, 5_000, 4}, {3, 1_000, 1}} {
		l, err := benchlayer.Runtime(uint64(spec[0]), spec[1], spec[2])
		if err != nil {
			b.Fatal(err)
		}
		layers = append(layers, l)
	}
	for _, c := range []struct {
		name     string
		rtt      time.Duration
		rate     float64
		annotate bool
	}{
		{"link/annotated", 20 * time.Millisecond, 100e6 / 8, true},
		{"link/not-annotated", 20 * time.Millisecond, 100e6 / 8, false},
		{"local", 0, 1e12, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := &benchResolver{layers: map[digest.Digest]benchlayer.Layer{}, annotate: c.annotate, rtt: c.rtt, rate: c.rate}
			var digests []digest.Digest
			for i, l := range layers {
				d := digest.FromString(fmt.Sprintf("original layer %d", i))
				r.layers[d] = l
				digests = append(digests, d)
			}
			ctx := namespaces.WithNamespace(context.Background(), "rill-bench")
			benchlayer.CPUTime(b)
			for b.Loop() {
				b.StopTimer()
				sn, err := NewSnapshotter(ctx, b.TempDir(), WithResolver(r), WithBackgroundFetch(false, 0))
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				parent := ""
				for i, d := range digests {
					labels := map[string]string{
						"containerd.io/snapshot.ref":                 fmt.Sprintf("chain-%d", i),
						"containerd.io/snapshot/cri.image-ref":       "127.0.0.1:5000/python:3",
						"containerd.io/snapshot/cri.layer-digest":    d.String(),
						"containerd.io/snapshot/cri.manifest-digest": digest.FromString("manifest").String(),
						"containerd.io/snapshot/cri.image-layers":    layerList(digests[i:]),
					}
					if _, err := sn.Prepare(ctx, fmt.Sprintf("extract-%d", i), parent, snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
						b.Fatalf("layer %d: %v, want it streamed", i, err)
					}
					parent = fmt.Sprintf("chain-%d", i)
				}
				b.StopTimer()
				if err := sn.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
