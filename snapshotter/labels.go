package snapshotter

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
)

// Labels containerd passes on Prepare that name the image and layer being unpacked.
const (
	// labelTOCDigest is the eStargz TOC digest of a layer: an annotation of the layer in its
	// manifest, passed through by containerd because of its containerd.io/snapshot/ prefix.
	labelTOCDigest = artifact.AnnotationTOCDigest
	// The "remote" dialect of other lazy-pull clients (stargz-snapshotter's).
	labelRemoteRef       = "containerd.io/snapshot/remote/stargz.reference"
	labelRemoteDigest    = "containerd.io/snapshot/remote/stargz.digest"
	labelRemoteLayers    = "containerd.io/snapshot/remote/stargz.layers"
	labelRemoteTOCDigest = "containerd.io/snapshot/remote/stargz.toc.digest"
)

// LayerLabels is what Prepare's labels say about the layer being unpacked.
type LayerLabels struct {
	// Target is the committed snapshot name containerd will look for (the chain ID).
	Target string
	// ImageRef is the reference being pulled (tag or digest).
	ImageRef string
	// Manifest is the digest of the image manifest the layer belongs to (may be empty in the
	// remote dialect).
	Manifest digest.Digest
	// Layer is the digest of the (compressed) layer blob.
	Layer digest.Digest
	// Layers are this layer and the ones above it, in order, as far as the label holds them.
	Layers []digest.Digest
	// TOCDigest is set when the layer's manifest annotates it as eStargz.
	TOCDigest digest.Digest
}

// ParseLayerLabels reads the labels of an unpack Prepare. ok is false when the labels do not
// describe an image layer (an ordinary Prepare, or a client that passes no image labels); an
// error means the labels are present but malformed.
func ParseLayerLabels(labels map[string]string) (l LayerLabels, ok bool, err error) {
	l.Target = labels[snapshots.LabelSnapshotRef]
	if l.Target == "" {
		return l, false, nil
	}
	ref, layer, manifest, layers, toc := labels[snapshotters.TargetRefLabel], labels[snapshotters.TargetLayerDigestLabel],
		labels[snapshotters.TargetManifestDigestLabel], labels[snapshotters.TargetImageLayersLabel], labels[labelTOCDigest]
	if ref == "" && labels[labelRemoteRef] != "" {
		ref, layer, layers = labels[labelRemoteRef], labels[labelRemoteDigest], labels[labelRemoteLayers]
		if toc == "" {
			toc = labels[labelRemoteTOCDigest]
		}
	}
	if ref == "" || layer == "" {
		return l, false, nil
	}
	l.ImageRef = ref
	if l.Layer, err = digest.Parse(layer); err != nil {
		return l, false, fmt.Errorf("label layer digest %q: %w", layer, err)
	}
	if manifest != "" {
		if l.Manifest, err = digest.Parse(manifest); err != nil {
			return l, false, fmt.Errorf("label manifest digest %q: %w", manifest, err)
		}
	}
	if toc != "" {
		if l.TOCDigest, err = digest.Parse(toc); err != nil {
			return l, false, fmt.Errorf("label TOC digest %q: %w", toc, err)
		}
	}
	for _, s := range strings.Split(layers, ",") {
		if s == "" {
			continue
		}
		d, err := digest.Parse(s)
		if err != nil {
			return l, false, fmt.Errorf("label image layers: %q: %w", s, err)
		}
		l.Layers = append(l.Layers, d)
	}
	return l, true, nil
}
