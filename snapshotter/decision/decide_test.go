package decision

import (
	"errors"
	"testing"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/snapshotter/status"
)

var (
	amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = ocispec.Platform{OS: "linux", Architecture: "arm64"}
	l0    = digest.FromString("layer 0")
	l1    = digest.FromString("layer 1")
	toc   = digest.FromString("toc")
)

// image is M: two plain layers.
func image() *ocispec.Manifest {
	return &ocispec.Manifest{Layers: []ocispec.Descriptor{{Digest: l0}, {Digest: l1}}}
}

var mDigest = digest.FromString("M")

// streaming is an artifact that streams M, made for platform.
func streaming(name string, platform string) Artifact {
	s := &ocispec.Manifest{ArtifactType: artifact.ArtifactType, Subject: &ocispec.Descriptor{Digest: mDigest},
		Annotations: map[string]string{artifact.AnnotationPlatform: platform}}
	for _, l := range image().Layers {
		s.Layers = append(s.Layers, ocispec.Descriptor{Digest: digest.FromString(name + l.Digest.String()),
			Annotations: map[string]string{artifact.AnnotationOriginalDigest: l.Digest.String(), artifact.AnnotationTOCDigest: toc.String()}})
	}
	return Artifact{Digest: digest.FromString(name), Manifest: s}
}

// bindingIndex lists M (binding art when set) and art.
func bindingIndex(art *Artifact) *ocispec.Index {
	idx := &ocispec.Index{Manifests: []ocispec.Descriptor{{Digest: mDigest, Platform: &amd64}}}
	if art != nil {
		idx.Manifests[0].Annotations = map[string]string{artifact.AnnotationBinding: art.Digest.String()}
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{Digest: art.Digest, ArtifactType: artifact.ArtifactType})
	}
	return idx
}

// Every reason the decision gives, from the facts that lead to it.
func TestDecide(t *testing.T) {
	bound := streaming("bound", "linux/amd64")
	ref := streaming("referrer", "linux/amd64")
	forged := streaming("forged", "linux/amd64")
	forged.Manifest.Layers[0].Annotations[artifact.AnnotationOriginalDigest] = digest.FromString("other").String()
	armMade := streaming("arm", "linux/arm64")
	badTOC := streaming("bad toc", "linux/amd64")
	badTOC.Manifest.Layers[1].Annotations[artifact.AnnotationTOCDigest] = "sha256:nothex"

	// facts is an image pulled by tag, an index binding art (none when nil), M of platform p.
	facts := func(art *Artifact, p ocispec.Platform) Facts {
		return Facts{Top: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index")},
			Index: bindingIndex(art), Manifest: image(), ManifestDigest: mDigest, Platform: p, Bound: art}
	}
	single := Facts{Top: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: mDigest}, Manifest: image(), ManifestDigest: mDigest, Platform: amd64}
	withRefs := func(refs ...Artifact) Facts { f := single; f.Referrers = refs; return f }
	esgz := single
	esgz.Manifest = image()
	esgz.Manifest.Layers[1].Annotations = map[string]string{artifact.AnnotationTOCDigest: toc.String()}
	badESGZ := single
	badESGZ.Manifest = image()
	badESGZ.Manifest.Layers[1].Annotations = map[string]string{artifact.AnnotationTOCDigest: "nonsense"}

	bp := Policy{Platforms: platforms.Any(amd64), Trust: TrustBound}
	rp := Policy{Platforms: platforms.Any(amd64), Trust: TrustReferrers}

	for _, c := range []struct {
		name   string
		f      Facts
		l      Labels
		p      Policy
		reason string
		from   digest.Digest // the artifact streamed from ("" for none or the layer itself)
		stream bool
	}{
		{"bound artifact", facts(&bound, amd64), Labels{Manifest: mDigest, Layer: l1}, bp, status.ReasonBound, bound.Digest, true},
		{"bound artifact, containerd names no manifest", facts(&bound, amd64), Labels{Layer: l0}, bp, status.ReasonBound, bound.Digest, true},
		{"index without a streaming platform", facts(&bound, amd64), Labels{Layer: l0}, Policy{Platforms: platforms.Any(arm64)}, status.ReasonNoPlatformInIndex, "", false},
		{"tag moved: M no longer in the index", facts(&bound, amd64), Labels{Manifest: digest.FromString("N"), Layer: l0}, bp, status.ReasonManifestNotInIndex, "", false},
		{"tag moved: names another manifest", single, Labels{Manifest: digest.FromString("N"), Layer: l0}, bp, status.ReasonReferenceMoved, "", false},
		{"platform not streamed", facts(&bound, arm64), Labels{Manifest: mDigest, Layer: l0}, bp, status.ReasonPlatform("linux/arm64"), "", false},
		{"layer not in M", facts(&bound, amd64), Labels{Manifest: mDigest, Layer: digest.FromString("x")}, bp, status.ReasonLayerNotInManifest, "", false},
		{"eStargz layer of the image", esgz, Labels{Layer: l1}, bp, status.ReasonEStargz, "", true},
		{"eStargz image's plain layer", esgz, Labels{Layer: l0}, bp, status.ReasonNoBound, "", false},
		{"eStargz layer with a bad TOC digest", badESGZ, Labels{Layer: l1}, bp, status.ReasonBadTOCAnnotation, "", false},
		{"artifact layer with a bad TOC digest", facts(&badTOC, amd64), Labels{Layer: l1}, bp, status.ReasonBadTOCAnnotation, "", false},
		{"bound artifact of other layers", facts(&forged, amd64), Labels{Layer: l0}, bp, status.ReasonBoundInvalid, "", false},
		{"bound artifact made for another platform", facts(&armMade, amd64), Labels{Layer: l0}, bp, status.ReasonBoundInvalid, "", false},
		{"bound artifact unreadable", facts(&Artifact{Digest: bound.Digest, Err: errors.New("404")}, amd64), Labels{Layer: l0}, bp, status.ReasonBoundInvalid, "", false},
		{"bound artifact not listed in the index", func() Facts {
			f := facts(&bound, amd64)
			f.Index.Manifests = f.Index.Manifests[:1]
			return f
		}(), Labels{Layer: l0}, bp, status.ReasonBoundInvalid, "", false},
		{"no binding, referrers not trusted", withRefs(ref), Labels{Layer: l0}, bp, status.ReasonNoBound, "", false},
		{"referrer trusted", withRefs(ref), Labels{Layer: l0}, rp, status.ReasonReferrer, ref.Digest, true},
		{"first usable referrer", withRefs(forged, Artifact{Digest: digest.FromString("gone"), Err: errors.New("404")}, ref), Labels{Layer: l1}, rp, status.ReasonReferrer, ref.Digest, true},
		{"no usable referrer", withRefs(forged, armMade), Labels{Layer: l0}, rp, status.ReasonNoArtifact, "", false},
		{"no referrer", single, Labels{Layer: l0}, rp, status.ReasonNoArtifact, "", false},
		{"referrers cannot be listed", func() Facts { f := single; f.ReferrersErr = errors.New("500"); return f }(), Labels{Layer: l0}, rp, status.ReasonReferrersError, "", false},
		{"binding decides even where referrers are trusted", facts(&forged, amd64), Labels{Layer: l0}, rp, status.ReasonBoundInvalid, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, reason, ok := Decide(c.f, c.l, c.p)
			if reason != c.reason || ok != c.stream || s.Artifact != c.from {
				t.Fatalf("Decide: %v %q from %q, want %v %q from %q", ok, reason, s.Artifact, c.stream, c.reason, c.from)
			}
			if ok && s.TOC != toc {
				t.Errorf("TOC %s, want %s", s.TOC, toc)
			}
		})
	}
}

func TestProfile(t *testing.T) {
	art := streaming("bound", "linux/amd64")
	enc, _, err := artifact.EncodeProfile([]string{"usr/bin/app", "etc/app.conf"})
	if err != nil {
		t.Fatal(err)
	}
	art.Manifest.Annotations[artifact.AnnotationPrefetch] = enc
	f := Facts{Top: ocispec.Descriptor{Digest: digest.FromString("index")}, Index: bindingIndex(&art), Manifest: image(), ManifestDigest: mDigest, Platform: amd64, Bound: &art}
	img := DecideImage(f, mDigest, Policy{Platforms: platforms.Any(amd64), Trust: TrustBound})
	if len(img.Profile) != 2 || img.Profile[0] != "usr/bin/app" || img.ProfileErr != nil {
		t.Errorf("profile %v, %v", img.Profile, img.ProfileErr)
	}
	art.Manifest.Annotations[artifact.AnnotationPrefetch] = "not base64 gzip"
	img = DecideImage(f, mDigest, Policy{Platforms: platforms.Any(amd64), Trust: TrustBound})
	if img.Reason != status.ReasonBound || img.Profile != nil || img.ProfileErr == nil {
		t.Errorf("a broken profile costs only prefetch: %+v", img)
	}
}
