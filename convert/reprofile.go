package convert

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// A prefetch profile lives in the artifact manifest (artifact.AnnotationPrefetch). Giving an
// image that already has an artifact a new profile does not convert its layers again: the new
// artifact S' is S's manifest with the profile annotation replaced and a new creation time,
// over the same config and layer blobs, which are in the repository already. S stays as it
// is, so that every other tag bound to S keeps streaming; only the tag being created is
// bound to S'.

// reprofile pushes the artifact a with the encoded profile instead of its own.
func (c *Converter) reprofile(ctx context.Context, r imageRef, pm *platformManifest, a *Artifact, profile string) (CreatedArtifact, error) {
	raw, err := reprofiledManifest(a.manifest, profile, c.opts.now())
	if err != nil {
		return CreatedArtifact{}, err
	}
	d := digest.FromBytes(raw)
	desc, err := c.reg.PushManifest(ctx, r.at(d), ocispec.MediaTypeImageManifest, raw)
	if err != nil {
		return CreatedArtifact{}, fmt.Errorf("push the artifact manifest with the new prefetch profile: %w", err)
	}
	desc.ArtifactType = artifact.ArtifactType
	c.opts.log.WithFields(map[string]any{"platform": platforms.Format(pm.platform), "subject": pm.desc.Digest, "artifact": d, "from": a.Descriptor.Digest}).
		Info("pushed the streaming artifact with the new prefetch profile (layers reused)")
	return CreatedArtifact{Platform: platforms.Format(pm.platform), Subject: pm.desc, Artifact: desc, Reprofiled: a.Descriptor.Digest}, nil
}

// reprofiledManifest returns m with the encoded profile (none when "") and the creation time
// now. It is pure.
func reprofiledManifest(m ocispec.Manifest, profile string, now time.Time) ([]byte, error) {
	m.Annotations = maps.Clone(m.Annotations)
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	delete(m.Annotations, artifact.AnnotationPrefetch)
	if profile != "" {
		m.Annotations[artifact.AnnotationPrefetch] = profile
	}
	m.Annotations[artifact.AnnotationCreated] = now.UTC().Format(time.RFC3339)
	return json.MarshalIndent(m, "", "  ")
}

// ArtifactProfile returns the prefetch profile of the artifact manifest raw (nil for none).
func ArtifactProfile(raw []byte) ([]string, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("parse artifact manifest: %w", err)
	}
	p := m.Annotations[artifact.AnnotationPrefetch]
	if p == "" {
		return nil, nil
	}
	return artifact.DecodeProfile(p)
}

// boundElsewhere returns which of the artifacts ds a tag of r's repository other than r's
// binds (artifact → tag). When the tags cannot be listed or read, every artifact counts as
// bound: keeping an artifact costs registry space, deleting a bound one breaks pulls.
func (c *Converter) boundElsewhere(ctx context.Context, r imageRef, ds []digest.Digest) map[digest.Digest]string {
	out := map[digest.Digest]string{}
	keepAll := func(err error) map[digest.Digest]string {
		c.opts.log.WithError(err).Warn("cannot tell which tags are bound to the replaced artifacts; keeping them all")
		for _, d := range ds {
			out[d] = "(unknown)"
		}
		return out
	}
	tags, err := c.Tags(ctx, r.name)
	if err != nil {
		return keepAll(err)
	}
	want := map[digest.Digest]bool{}
	for _, d := range ds {
		want[d] = true
	}
	for _, tag := range tags {
		if tag == r.tag || IsFallbackTag(tag) {
			continue
		}
		t := imageRef{name: r.name, tag: tag}
		desc, err := c.reg.Resolve(ctx, t.String())
		if err != nil {
			return keepAll(err)
		}
		if !artifact.IsIndex(desc.MediaType) {
			continue
		}
		raw, err := c.reg.FetchManifest(ctx, t.at(desc.Digest), desc)
		if err != nil {
			return keepAll(err)
		}
		var idx ocispec.Index
		if json.Unmarshal(raw, &idx) != nil {
			continue
		}
		for _, m := range idx.Manifests {
			if s, err := digest.Parse(m.Annotations[artifact.AnnotationBinding]); err == nil && want[s] {
				out[s] = tag
			}
		}
	}
	return out
}
