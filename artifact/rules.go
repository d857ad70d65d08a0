package artifact

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The rules both halves apply to what they read from a registry: the writer's `rill show`
// and `rill delete`, and the node deciding whether a layer streams. Each is one function here
// so that the two cannot disagree.

// Docker's schema 2 media types, which registries still serve for many images.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// IsIndex reports whether mediaType is that of an index: OCI's or Docker's manifest list.
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == MediaTypeDockerManifestList
}

// IsManifest reports whether mediaType is that of an image manifest: OCI's or Docker's.
func IsManifest(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageManifest || mediaType == MediaTypeDockerManifest
}

// Streams checks that the artifact manifest s streams the image manifest m whose digest is
// subject: s is of the artifact type, names subject as its subject, and converts m's layers
// in the same count and order (each recording the original's digest and its TOC digest).
// When platform (os/arch[/variant], normalized) is not empty, s must also have been made for
// it. A nil m checks only what does not need it.
func Streams(s ocispec.Manifest, subject digest.Digest, m *ocispec.Manifest, platform string) error {
	if s.ArtifactType != ArtifactType {
		return fmt.Errorf("artifactType is %q, not %q", s.ArtifactType, ArtifactType)
	}
	if s.Subject == nil || s.Subject.Digest != subject {
		return fmt.Errorf("its subject is not %s", subject)
	}
	if m != nil {
		if len(s.Layers) != len(m.Layers) {
			return fmt.Errorf("it has %d layers, the image %d", len(s.Layers), len(m.Layers))
		}
		for i, l := range s.Layers {
			if got := l.Annotations[AnnotationOriginalDigest]; got != m.Layers[i].Digest.String() {
				return fmt.Errorf("layer %d was converted from %q, not from the image's %s", i, got, m.Layers[i].Digest)
			}
			if l.Annotations[AnnotationTOCDigest] == "" {
				return fmt.Errorf("layer %d has no TOC digest", i)
			}
		}
	}
	if got := s.Annotations[AnnotationPlatform]; platform != "" && got != platform {
		return fmt.Errorf("made for platform %q, the image is %s", got, platform)
	}
	return nil
}

// Created is when an artifact was built, from its AnnotationCreated (zero when absent or
// not RFC 3339).
func Created(annotations map[string]string) time.Time {
	t, err := time.Parse(time.RFC3339, annotations[AnnotationCreated])
	if err != nil {
		return time.Time{}
	}
	return t
}

// Candidate is one of several streaming artifacts of an image manifest, as the order of
// choice sees it.
type Candidate struct {
	Digest  digest.Digest
	Created time.Time // Created(its annotations)
	Bound   bool      // the tag's binding index names it
	Usable  bool      // Streams accepts it
}

// Before reports whether a is chosen before b: usable before unusable, bound before
// referrer-only, newer before older, then the lower digest. Every reader sorts by it, so
// `rill show` names the artifact a node streams.
func Before(a, b Candidate) bool {
	if a.Usable != b.Usable {
		return a.Usable
	}
	if a.Bound != b.Bound {
		return a.Bound
	}
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	return a.Digest < b.Digest
}
