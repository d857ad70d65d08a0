package convert

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// artifactPlatform is the platform of an artifact's entry in a binding index: one that no
// node matches, so that pulls never select the artifact itself (the convention BuildKit uses
// for attestation manifests).
var artifactPlatform = ocispec.Platform{OS: "unknown", Architecture: "unknown"}

// Layer media types.
const (
	mediaTypeLayerGzip = ocispec.MediaTypeImageLayerGzip
)

// convertedLayer is one layer of an artifact: the original's descriptor and what it was
// converted to.
type convertedLayer struct {
	original ocispec.Descriptor
	layer    Layer
}

// artifactSpec is everything an artifact manifest is built from.
type artifactSpec struct {
	subject   ocispec.Descriptor // M
	platform  ocispec.Platform
	config    []byte // M's config
	layers    []convertedLayer
	chunkSize int
	profile   string // encoded prefetch profile, "" when none
	created   time.Time
}

// buildArtifact returns the config and manifest of the streaming artifact of spec.subject.
// It is pure: the same spec gives the same bytes.
func buildArtifact(spec artifactSpec) (config, manifest []byte, err error) {
	config, err = artifactConfig(spec.config, spec.layers)
	if err != nil {
		return nil, nil, err
	}
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifact.ArtifactType,
		Config: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageConfig,
			Digest:    digest.FromBytes(config),
			Size:      int64(len(config)),
		},
		Subject: &ocispec.Descriptor{
			MediaType: spec.subject.MediaType,
			Digest:    spec.subject.Digest,
			Size:      spec.subject.Size,
		},
		Annotations: map[string]string{
			artifact.AnnotationFormat:    artifact.FormatName,
			artifact.AnnotationVersion:   artifact.FormatVersion,
			artifact.AnnotationPlatform:  platforms.Format(spec.platform),
			artifact.AnnotationChunkSize: fmt.Sprint(spec.chunkSize),
			artifact.AnnotationCreated:   spec.created.UTC().Format(time.RFC3339),
		},
	}
	m.SchemaVersion = 2
	if spec.profile != "" {
		m.Annotations[artifact.AnnotationPrefetch] = spec.profile
	}
	for _, l := range spec.layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{
			MediaType:   mediaTypeLayerGzip,
			Digest:      l.layer.Digest,
			Size:        l.layer.Size,
			Annotations: l.layer.Annotations(l.original.Digest),
		})
	}
	manifest, err = json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	return config, manifest, nil
}

// artifactConfig is M's config with the diff_ids of the converted layers: runnable, and
// otherwise the same image (environment, entrypoint, history, unknown fields too).
func artifactConfig(original []byte, layers []convertedLayer) ([]byte, error) {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(original, &cfg); err != nil {
		return nil, fmt.Errorf("parse image config: %w: %w", ErrNotRunnable, err)
	}
	diffIDs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.layer.DiffID
	}
	rootfs, err := json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs})
	if err != nil {
		return nil, err
	}
	out := maps.Clone(cfg)
	out["rootfs"] = rootfs
	return json.Marshal(out)
}

// imageConfig is what rill reads of an image config.
type imageConfig struct {
	ocispec.Platform
	RootFS ocispec.RootFS `json:"rootfs"`
}

func parseImageConfig(b []byte) (imageConfig, error) {
	var c imageConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("parse image config: %w: %w", ErrNotRunnable, err)
	}
	if c.OS == "" || c.Architecture == "" {
		return c, fmt.Errorf("image config names no os and architecture: %w", ErrNotRunnable)
	}
	return c, nil
}

// isImageConfigType reports whether mt is the media type of a runnable image's config.
func isImageConfigType(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == images.MediaTypeDockerSchema2Config
}

// isConvertibleLayer reports whether a layer of media type mt is a gzip or plain tar layer
// rill converts. zstd, encrypted and non-distributable layers are not.
func isConvertibleLayer(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayer,
		images.MediaTypeDockerSchema2LayerGzip, images.MediaTypeDockerSchema2Layer:
		return true
	}
	return false
}
