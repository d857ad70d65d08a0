package decision

import (
	"errors"
	"fmt"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/snapshotter/status"
)

// Trust modes for streaming artifacts found only as referrers.
const (
	// TrustBound streams an artifact only when the pulled reference binds it (the index at
	// the tag names it for the manifest): whoever can move the tag could change the image
	// anyway.
	TrustBound = "bound"
	// TrustReferrers also streams artifacts attached to the manifest as referrers in its own
	// repository, when their layers match the manifest's (the ACR model).
	TrustReferrers = "referrers"
)

// Policy is the node's configuration of the decision.
type Policy struct {
	// Platforms are the platforms that stream.
	Platforms platforms.Matcher
	// Trust is TrustBound or TrustReferrers.
	Trust string
}

// Artifact is a streaming artifact read from the registry, or why it could not be.
type Artifact struct {
	Digest   digest.Digest
	Manifest *ocispec.Manifest // nil when it could not be read
	Err      error             // why it could not be read
}

// Facts are what the registry said about the image a layer belongs to. The resolver gathers
// them in order and stops where the rest cannot matter; what it did not gather is zero.
type Facts struct {
	// Top is what the pulled reference names: M itself or an index listing it.
	Top ocispec.Descriptor
	// Index is Top's content when Top is an index.
	Index *ocispec.Index
	// Manifest is M, the platform manifest containerd unpacks (nil: not found).
	Manifest *ocispec.Manifest
	// ManifestDigest is M's digest.
	ManifestDigest digest.Digest
	// Platform is the platform of M's config.
	Platform ocispec.Platform
	// Bound is the artifact that the index binds to M, when it binds one.
	Bound *Artifact
	// Referrers are M's referrers of the artifact type, in the order of choice
	// (artifact.Before), as far as they were read; ReferrersErr says why they could not be
	// listed.
	Referrers    []Artifact
	ReferrersErr error
}

// Labels is what containerd says of the layer it prepares.
type Labels struct {
	// Manifest is the digest of M as containerd resolved it ("" when it does not say).
	Manifest digest.Digest
	// Layer is the digest of the layer blob.
	Layer digest.Digest
}

// SelectManifest names M's descriptor among what the pulled reference names, or the reason
// there is none to stream: the platform manifest of a streaming platform when containerd does
// not say, else the one it names, which the index must still list (and a manifest must still
// be) — a tag moved since containerd resolved it decides nothing.
func SelectManifest(top ocispec.Descriptor, index *ocispec.Index, manifest digest.Digest, p Policy) (ocispec.Descriptor, string) {
	switch {
	case index != nil && manifest == "":
		for _, m := range index.Manifests {
			if m.Platform != nil && p.Platforms.Match(*m.Platform) {
				return m, ""
			}
		}
		return ocispec.Descriptor{}, status.ReasonNoPlatformInIndex
	case index != nil:
		if d, ok := find(index, manifest); ok {
			return d, ""
		}
		return ocispec.Descriptor{}, status.ReasonManifestNotInIndex
	case manifest != "" && top.Digest != manifest:
		return ocispec.Descriptor{}, status.ReasonReferenceMoved
	}
	return top, ""
}

// Image is the decision for an image, which its layers share: the artifact that streams it,
// or why none does.
type Image struct {
	// Reason is why the image's layers that are not eStargz themselves stream, or why not.
	Reason string
	// Artifact is the chosen artifact (nil: none).
	Artifact *Artifact
	// Rejected says why the bound artifact or referrers were not chosen (for the log).
	Rejected []error
	// Profile is the artifact's prefetch profile, at most artifact.MaxProfilePaths;
	// ProfileErr why it was ignored.
	Profile    []string
	ProfileErr error
	// Final is set when no layer of the image streams, eStargz or not (Reason says why).
	Final bool
}

// DecideImage decides which artifact, if any, streams the image of f.
func DecideImage(f Facts, manifest digest.Digest, p Policy) Image {
	if _, reason := SelectManifest(f.Top, f.Index, manifest, p); reason != "" {
		return Image{Reason: reason, Final: true}
	}
	if f.Manifest == nil {
		return Image{Reason: status.ReasonResolveError, Final: true}
	}
	platform := platforms.Format(platforms.Normalize(f.Platform))
	if !p.Platforms.Match(f.Platform) {
		return Image{Reason: status.ReasonPlatform(platforms.Format(f.Platform)), Final: true}
	}
	check := func(a *Artifact) error {
		if a.Err != nil {
			return fmt.Errorf("artifact %s: %w", a.Digest, a.Err)
		}
		if a.Manifest == nil {
			return fmt.Errorf("artifact %s: not read", a.Digest)
		}
		if err := artifact.Streams(*a.Manifest, f.ManifestDigest, f.Manifest, platform); err != nil {
			return fmt.Errorf("artifact %s: %w", a.Digest, err)
		}
		return nil
	}
	var img Image
	switch {
	case f.Bound != nil:
		if _, listed := find(f.Index, f.Bound.Digest); !listed && f.Bound.Err == nil {
			img.Rejected = append(img.Rejected, fmt.Errorf("artifact %s: %w", f.Bound.Digest, errNotListed))
		} else if err := check(f.Bound); err != nil {
			img.Rejected = append(img.Rejected, err)
		} else {
			img.Reason, img.Artifact = status.ReasonBound, f.Bound
			break
		}
		img.Reason = status.ReasonBoundInvalid
		return img
	case p.Trust != TrustReferrers:
		return Image{Reason: status.ReasonNoBound}
	case f.ReferrersErr != nil:
		return Image{Reason: status.ReasonReferrersError, Rejected: []error{f.ReferrersErr}}
	default:
		for i := range f.Referrers {
			if err := check(&f.Referrers[i]); err != nil {
				img.Rejected = append(img.Rejected, err)
				continue
			}
			img.Reason, img.Artifact = status.ReasonReferrer, &f.Referrers[i]
			break
		}
		if img.Artifact == nil {
			img.Reason = status.ReasonNoArtifact
			return img
		}
	}
	if encoded := img.Artifact.Manifest.Annotations[artifact.AnnotationPrefetch]; encoded != "" {
		paths, err := artifact.DecodeProfile(encoded)
		if err != nil {
			img.ProfileErr = err
		} else {
			if len(paths) > artifact.MaxProfilePaths {
				// A profile of a million paths prefetches no more than the first ones.
				img.ProfileErr = fmt.Errorf("%d paths: cut to the first %d", len(paths), artifact.MaxProfilePaths)
				paths = paths[:artifact.MaxProfilePaths]
			}
			img.Profile = paths
		}
	}
	return img
}

var errNotListed = errors.New("the binding index does not list the artifact")

// Stream is a layer to stream: the blob (the layer itself, or its counterpart in the
// artifact) and its TOC digest.
type Stream struct {
	Blob ocispec.Descriptor
	TOC  digest.Digest
	// Artifact is the artifact streamed from ("" for an eStargz layer of the image itself).
	Artifact digest.Digest
}

// DecideLayer decides whether layer, of the image decided as img, streams: the layer itself
// when the image's manifest annotates it as eStargz, else its counterpart in the image's
// artifact. ok is false for a full pull, and reason says why either way.
func DecideLayer(f Facts, img Image, layer digest.Digest) (s Stream, reason string, ok bool) {
	if img.Final {
		return Stream{}, img.Reason, false
	}
	i := -1
	for j, l := range f.Manifest.Layers {
		if l.Digest == layer {
			i = j
			break
		}
	}
	if i < 0 {
		return Stream{}, status.ReasonLayerNotInManifest, false
	}
	if toc := f.Manifest.Layers[i].Annotations[artifact.AnnotationTOCDigest]; toc != "" {
		d, err := digest.Parse(toc)
		if err != nil {
			return Stream{}, status.ReasonBadTOCAnnotation, false
		}
		return Stream{Blob: f.Manifest.Layers[i], TOC: d}, status.ReasonEStargz, true
	}
	if img.Artifact == nil {
		return Stream{}, img.Reason, false
	}
	streamed := img.Artifact.Manifest.Layers[i]
	d, err := digest.Parse(streamed.Annotations[artifact.AnnotationTOCDigest])
	if err != nil {
		return Stream{}, status.ReasonBadTOCAnnotation, false
	}
	return Stream{Blob: streamed, TOC: d, Artifact: img.Artifact.Digest}, img.Reason, true
}

// Decide is the whole decision for one layer: DecideImage, then DecideLayer.
func Decide(f Facts, l Labels, p Policy) (Stream, string, bool) {
	return DecideLayer(f, DecideImage(f, l.Manifest, p), l.Layer)
}

func find(index *ocispec.Index, d digest.Digest) (ocispec.Descriptor, bool) {
	if index == nil {
		return ocispec.Descriptor{}, false
	}
	for _, m := range index.Manifests {
		if m.Digest == d {
			return m, true
		}
	}
	return ocispec.Descriptor{}, false
}
