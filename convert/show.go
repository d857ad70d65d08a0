package convert

import (
	"context"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Status is what Show reports of an image.
type Status struct {
	Reference string `json:"reference"`
	// Digest is what the reference resolves to (the binding index when bound).
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	// Bound says that the tag names a binding index.
	Bound bool `json:"bound"`
	// Manifests are the platform manifests with their artifacts.
	Manifests []ManifestStatus `json:"manifests"`
}

// ManifestStatus is one platform manifest and its artifacts, the one nodes use first.
type ManifestStatus struct {
	Platform string             `json:"platform"`
	Manifest ocispec.Descriptor `json:"manifest"`
	// Streaming says that the platform is one of the streaming platforms.
	Streaming bool       `json:"streaming"`
	Artifacts []Artifact `json:"artifacts"`
}

// Show returns the streaming artifacts of the image ref names, per platform manifest, in the
// order of choice (the first usable one is what nodes use).
func (c *Converter) Show(ctx context.Context, ref string) (_ *Status, err error) {
	defer func() { err = authError(err) }()
	r, err := parseReference(ref)
	if err != nil {
		return nil, err
	}
	im, err := c.loadImage(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	st := &Status{Reference: r.String(), Digest: im.desc.Digest, MediaType: im.desc.MediaType, Bound: im.isBinding()}
	m := c.opts.matcher()
	for _, pm := range im.manifests {
		ms := ManifestStatus{Platform: platforms.Format(pm.platform), Manifest: pm.desc, Streaming: m.Match(pm.platform), Artifacts: []Artifact{}}
		if pm.raw != nil {
			as, err := c.artifactsOf(ctx, r, pm)
			if err != nil {
				return nil, err
			}
			ms.Artifacts = as
		}
		st.Manifests = append(st.Manifests, ms)
	}
	return st, nil
}
