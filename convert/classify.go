package convert

import (
	"encoding/json"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// ManifestKind says what a manifest pushed to a registry is, as far as rill is concerned.
type ManifestKind int

const (
	// KindImage is an image manifest or index rill may convert.
	KindImage ManifestKind = iota
	// KindBinding is a binding index rill wrote at a tag: its image already streams.
	KindBinding
	// KindStreamingArtifact is a streaming artifact (or the referrers index of the tag-schema
	// fallback that lists one).
	KindStreamingArtifact
	// KindOther is anything else no node runs: an artifact of another tool (signatures,
	// SBOMs, rill's own repository policies), or something that does not parse.
	KindOther
)

func (k ManifestKind) String() string {
	switch k {
	case KindImage:
		return "image"
	case KindBinding:
		return "binding index"
	case KindStreamingArtifact:
		return "streaming artifact"
	}
	return "other artifact"
}

// ClassifyManifest tells what the manifest or index raw (of mediaType) is, from its bytes
// alone: the watcher uses it to leave rill's own pushes alone, so that binding a tag never
// triggers another conversion.
func ClassifyManifest(mediaType string, raw []byte) ManifestKind {
	var m struct {
		MediaType    string               `json:"mediaType"`
		ArtifactType string               `json:"artifactType"`
		Config       *ocispec.Descriptor  `json:"config"`
		Manifests    []ocispec.Descriptor `json:"manifests"`
		Annotations  map[string]string    `json:"annotations"`
		Subject      *ocispec.Descriptor  `json:"subject"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return KindOther
	}
	if mediaType == "" {
		mediaType = m.MediaType
	}
	switch {
	case artifact.IsIndex(mediaType) || (mediaType == "" && m.Manifests != nil):
		if _, ok := m.Annotations[artifact.AnnotationBoundFrom]; ok {
			return KindBinding
		}
		streaming, artifacts := len(m.Manifests) > 0, len(m.Manifests) > 0
		for _, d := range m.Manifests {
			if _, ok := d.Annotations[artifact.AnnotationBinding]; ok {
				return KindBinding
			}
			if d.ArtifactType != artifact.ArtifactType {
				streaming = false
			}
			if d.ArtifactType == "" {
				artifacts = false
			}
		}
		if streaming {
			return KindStreamingArtifact // a referrers index of the tag-schema fallback
		}
		if artifacts || m.ArtifactType != "" || m.Subject != nil {
			return KindOther // a referrers index, or an index-shaped artifact
		}
		return KindImage
	case artifact.IsManifest(mediaType) || (mediaType == "" && m.Config != nil):
		if m.ArtifactType == artifact.ArtifactType || (m.Config != nil && m.Config.MediaType == artifact.ArtifactType) {
			return KindStreamingArtifact
		}
		if m.Config == nil || !isImageConfigType(m.Config.MediaType) {
			return KindOther
		}
		return KindImage
	}
	return KindOther
}

// IsFallbackTag reports whether tag is an OCI tag-schema fallback tag ("sha256-<hex>"), which
// holds a referrers index, never an image.
func IsFallbackTag(tag string) bool {
	alg, hex, ok := strings.Cut(tag, "-")
	if !ok || (alg != "sha256" && alg != "sha512") {
		return false
	}
	if len(hex) != 64 && len(hex) != 128 {
		return false
	}
	return strings.Trim(hex, "0123456789abcdef") == ""
}
