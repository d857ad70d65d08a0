package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// imageRef is a parsed image reference.
type imageRef struct {
	name   string // host/repository
	tag    string
	digest digest.Digest
}

// ParseReference parses an image reference as Docker does ("alpine" is
// docker.io/library/alpine:latest); the error is an InvalidArgument.
func ParseReference(s string) (string, error) {
	r, err := parseReference(s)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}

func parseReference(s string) (imageRef, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return imageRef{}, fmt.Errorf("%q is not an image reference (want [HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]): %w: %w", s, errdefs.ErrInvalidArgument, err)
	}
	r := imageRef{name: named.Name()}
	if t, ok := named.(reference.Tagged); ok {
		r.tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.digest = d.Digest()
	}
	if r.tag == "" && r.digest == "" {
		r.tag = "latest"
	}
	return r, nil
}

func (r imageRef) String() string {
	s := r.name
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest.String()
	}
	return s
}

// tagged is the reference by tag alone (what a binding is pushed to).
func (r imageRef) tagged() string { return r.name + ":" + r.tag }

// at is the reference to digest d in the same repository.
func (r imageRef) at(d digest.Digest) string { return r.name + "@" + d.String() }

// image is what a reference names, as read from the registry.
type image struct {
	ref  imageRef
	desc ocispec.Descriptor // what the reference resolved to
	// index is set when desc is an index; raw holds its bytes (or the manifest's).
	index *ocispec.Index
	raw   []byte
	// manifests are the platform manifests: the index's entries (without rill's artifact
	// entries), or the one manifest.
	manifests []*platformManifest
}

// platformManifest is one platform's image manifest M.
type platformManifest struct {
	desc     ocispec.Descriptor // as the index lists it, Platform always set
	platform ocispec.Platform
	raw      []byte
	manifest ocispec.Manifest
	config   []byte
	diffIDs  []digest.Digest
	// bound is the artifact the tag's index binds to M, if any.
	bound digest.Digest
}

// isBinding reports whether the reference names a binding index rill wrote.
func (im *image) isBinding() bool {
	if im.index == nil {
		return false
	}
	if _, ok := im.index.Annotations[artifact.AnnotationBoundFrom]; ok {
		return true
	}
	return slices.ContainsFunc(im.manifests, func(m *platformManifest) bool { return m.bound != "" })
}

// loadImage resolves ref and reads its index (if any) and manifests. With want set, only the
// platform manifests it matches are read whole (with their configs); else all are.
func (c *Converter) loadImage(ctx context.Context, ref imageRef, want platforms.Matcher) (*image, error) {
	desc, err := c.reg.Resolve(ctx, ref.String())
	if err != nil {
		return nil, err
	}
	im := &image{ref: ref, desc: desc}
	switch {
	case artifact.IsIndex(desc.MediaType):
		im.raw, err = c.reg.FetchManifest(ctx, ref.at(desc.Digest), desc)
		if err != nil {
			return nil, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(im.raw, &idx); err != nil {
			return nil, fmt.Errorf("parse index %s: %w: %w", desc.Digest, ErrUnsupportedMediaType, err)
		}
		im.index = &idx
		for _, d := range idx.Manifests {
			if d.ArtifactType == artifact.ArtifactType || d.Platform == nil || platformEqual(*d.Platform, artifactPlatform) || !artifact.IsManifest(d.MediaType) {
				continue
			}
			pm := &platformManifest{desc: d, platform: *d.Platform}
			if b, ok := d.Annotations[artifact.AnnotationBinding]; ok {
				pm.bound, _ = digest.Parse(b)
			}
			im.manifests = append(im.manifests, pm)
		}
	case artifact.IsManifest(desc.MediaType):
		pm := &platformManifest{desc: desc}
		if err := c.readManifest(ctx, ref, pm); err != nil {
			return nil, err
		}
		im.raw = pm.raw
		im.manifests = []*platformManifest{pm}
		return im, nil
	default:
		return nil, fmt.Errorf("%s is of media type %q: %w", ref, desc.MediaType, ErrUnsupportedMediaType)
	}
	for _, pm := range im.manifests {
		if want != nil && !want.Match(pm.platform) {
			continue
		}
		if err := c.readManifest(ctx, ref, pm); err != nil {
			if want == nil && (errors.Is(err, ErrNotRunnable) || errors.Is(err, ErrIsStreamingArtifact) || errors.Is(err, ErrUnsupportedMediaType)) {
				continue // listed, but nothing rill streams: shown as it is
			}
			return nil, err
		}
	}
	return im, nil
}

// readManifest reads M and its config, and classifies it: a streaming artifact, not
// runnable, or an image manifest with a platform.
func (c *Converter) readManifest(ctx context.Context, ref imageRef, pm *platformManifest) error {
	raw, err := c.reg.FetchManifest(ctx, ref.at(pm.desc.Digest), pm.desc)
	if err != nil {
		return err
	}
	pm.raw = raw
	if err := json.Unmarshal(raw, &pm.manifest); err != nil {
		return fmt.Errorf("parse manifest %s: %w: %w", pm.desc.Digest, ErrUnsupportedMediaType, err)
	}
	m := pm.manifest
	if m.ArtifactType == artifact.ArtifactType || m.Config.MediaType == artifact.ArtifactType {
		return fmt.Errorf("%s (%s) is a streaming artifact; name the image it streams: %w", ref, pm.desc.Digest, ErrIsStreamingArtifact)
	}
	if !isImageConfigType(m.Config.MediaType) {
		what := m.ArtifactType
		if what == "" {
			what = m.Config.MediaType
		}
		return fmt.Errorf("%s (%s) is an artifact of type %q, not a container image: %w", ref, pm.desc.Digest, what, ErrNotRunnable)
	}
	pm.config, err = c.reg.FetchBlob(ctx, ref.at(pm.desc.Digest), m.Config)
	if err != nil {
		return fmt.Errorf("read the image config: %w", err)
	}
	cfg, err := parseImageConfig(pm.config)
	if err != nil {
		return fmt.Errorf("%s (%s): %w", ref, pm.desc.Digest, err)
	}
	if pm.desc.Platform == nil {
		p := platforms.Normalize(cfg.Platform)
		pm.desc.Platform = &ocispec.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: p.OSVersion}
	}
	pm.platform = platforms.Normalize(*pm.desc.Platform)
	pm.diffIDs = cfg.RootFS.DiffIDs
	return nil
}

// checkConvertible says why M cannot get a streaming artifact, if it cannot.
func (pm *platformManifest) checkConvertible() error {
	m := pm.manifest
	if len(m.Layers) == 0 {
		return fmt.Errorf("manifest %s has no layers: %w", pm.desc.Digest, ErrNotRunnable)
	}
	if len(pm.diffIDs) != len(m.Layers) {
		return fmt.Errorf("manifest %s has %d layers but its config %d diff_ids: %w", pm.desc.Digest, len(m.Layers), len(pm.diffIDs), ErrNotRunnable)
	}
	estargz := 0
	for i, l := range m.Layers {
		if !isConvertibleLayer(l.MediaType) {
			return fmt.Errorf("layer %d (%s) of manifest %s is of media type %q; rill converts gzip and plain tar layers: %w", i, l.Digest, pm.desc.Digest, l.MediaType, ErrUnsupportedMediaType)
		}
		if l.Annotations[artifact.AnnotationTOCDigest] != "" {
			estargz++
		}
	}
	if estargz == len(m.Layers) {
		return fmt.Errorf("manifest %s is already eStargz (every layer has a TOC digest); nodes stream it as it is: %w", pm.desc.Digest, ErrIsStreamingArtifact)
	}
	return nil
}

func platformEqual(a, b ocispec.Platform) bool {
	return a.OS == b.OS && a.Architecture == b.Architecture && a.Variant == b.Variant
}

// platformList formats the platforms of ms for messages.
func platformList(ms []*platformManifest) string {
	var s []string
	for _, m := range ms {
		s = append(s, platforms.Format(m.platform))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
