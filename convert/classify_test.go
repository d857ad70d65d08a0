package convert

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// The watcher leaves rill's own pushes alone: what ClassifyManifest calls an image is what it
// converts.
func TestClassifyManifest(t *testing.T) {
	image := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}`
	for _, tc := range []struct {
		name, mediaType, raw string
		want                 ManifestKind
	}{
		{"image manifest", ocispec.MediaTypeImageManifest, image, KindImage},
		{"docker manifest", "application/vnd.docker.distribution.manifest.v2+json", `{"schemaVersion":2,"config":{"mediaType":"application/vnd.docker.container.image.v1+json"}}`, KindImage},
		{"image index", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"os":"linux","architecture":"amd64"}}]}`, KindImage},
		{"binding index", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"` + artifact.AnnotationBinding + `":"sha256:00"}}]}`, KindBinding},
		{"binding index by its bound-from", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[],"annotations":{"` + artifact.AnnotationBoundFrom + `":"sha256:00"}}`, KindBinding},
		{"streaming artifact", ocispec.MediaTypeImageManifest, `{"schemaVersion":2,"artifactType":"` + artifact.ArtifactType + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}`, KindStreamingArtifact},
		{"fallback index of streaming artifacts", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[{"artifactType":"` + artifact.ArtifactType + `"}]}`, KindStreamingArtifact},
		{"fallback index of signatures", ocispec.MediaTypeImageIndex, `{"schemaVersion":2,"manifests":[{"artifactType":"application/vnd.dev.cosign"}]}`, KindOther},
		{"policy artifact", ocispec.MediaTypeImageManifest, `{"schemaVersion":2,"artifactType":"application/vnd.rill.policy.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json"}}`, KindOther},
		{"helm chart", ocispec.MediaTypeImageManifest, `{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json"}}`, KindOther},
		{"garbage", ocispec.MediaTypeImageManifest, `{`, KindOther},
		{"unknown media type", "application/octet-stream", image, KindOther},
	} {
		if got := ClassifyManifest(tc.mediaType, []byte(tc.raw)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestIsFallbackTag(t *testing.T) {
	hex := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for tag, want := range map[string]bool{
		"sha256-" + hex: true, "sha256-" + hex[:63]: false, "sha256-" + hex + "0": false,
		"v1": false, "latest": false, "sha256-" + hex[:63] + "G": false, "md5-" + hex: false,
	} {
		if got := IsFallbackTag(tag); got != want {
			t.Errorf("IsFallbackTag(%q) = %v", tag, got)
		}
	}
}
