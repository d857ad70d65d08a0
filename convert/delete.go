package convert

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/remote"
)

// DeleteResult says what Delete removed.
type DeleteResult struct {
	Reference string
	// Artifacts are the streaming artifacts deleted.
	Artifacts []digest.Digest
	// Manifests are the image's own manifests and indexes deleted (none with
	// streaming-only).
	Manifests []digest.Digest
	// Unbound says that the tag was put back to what it named before it was bound.
	Unbound bool
}

// Delete deletes the image ref names together with its streaming artifacts: the tag, the
// binding or original index, the platform manifests, the artifacts and their referrers
// fallback tags. With streamingOnly it deletes only the artifacts, after putting back at the
// tag what it named before it was bound. Blobs are left to the registry's garbage collection
// (converted layers may be shared by the artifacts of other images).
func (c *Converter) Delete(ctx context.Context, ref string, streamingOnly bool) (_ *DeleteResult, err error) {
	defer func() { err = authError(err) }()
	r, err := parseReference(ref)
	if err != nil {
		return nil, err
	}
	im, err := c.loadImage(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	res := &DeleteResult{Reference: r.String()}
	type owned struct{ subject, artifact digest.Digest }
	var artifacts []owned
	for _, pm := range im.manifests {
		as, err := c.artifactsOf(ctx, r, pm)
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			artifacts = append(artifacts, owned{pm.desc.Digest, a.Descriptor.Digest})
		}
	}

	if streamingOnly {
		// First the tag, so that no node is pointed at an artifact being deleted.
		if r.digest == "" && im.isBinding() {
			if err := c.unbind(ctx, im); err != nil {
				return nil, fmt.Errorf("unbind %s: %w", r.tagged(), err)
			}
			res.Unbound = true
		}
		for _, a := range artifacts {
			if err := c.removeArtifact(ctx, r, a.subject, a.artifact); err != nil {
				return res, err
			}
			res.Artifacts = append(res.Artifacts, a.artifact)
		}
		return res, nil
	}

	// The tag (and whatever it names) first: a pull of it must fail rather than find half
	// an image.
	if r.digest == "" {
		if err := c.deleteTagged(ctx, r.name, r.tag, im.desc.Digest); err != nil {
			return res, err
		}
	} else if err := c.deleteIgnoringMissing(ctx, r.at(im.desc.Digest)); err != nil {
		return res, err
	}
	res.Manifests = append(res.Manifests, im.desc.Digest)
	for _, a := range artifacts {
		if err := c.deleteIgnoringMissing(ctx, r.at(a.artifact)); err != nil {
			return res, err
		}
		res.Artifacts = append(res.Artifacts, a.artifact)
	}
	for _, pm := range im.manifests {
		if pm.desc.Digest == im.desc.Digest {
			continue
		}
		if err := c.deleteIgnoringMissing(ctx, r.at(pm.desc.Digest)); err != nil {
			return res, err
		}
		res.Manifests = append(res.Manifests, pm.desc.Digest)
	}
	for _, pm := range im.manifests {
		if err := c.deleteFallback(ctx, r, pm.desc.Digest); err != nil {
			return res, err
		}
	}
	if from := boundFrom(im); from != im.desc.Digest && im.index != nil {
		if err := c.deleteIgnoringMissing(ctx, r.at(from)); err != nil {
			return res, err
		}
	}
	return res, nil
}

// removeArtifact deletes the artifact manifest s of subject m and drops it from m's referrers
// fallback index.
func (c *Converter) removeArtifact(ctx context.Context, r imageRef, m, s digest.Digest) error {
	if err := c.deleteIgnoringMissing(ctx, r.at(s)); err != nil {
		return err
	}
	if m == "" {
		return nil
	}
	if err := c.reg.RemoveReferrer(ctx, r.name, m, s); err != nil {
		return fmt.Errorf("drop %s from the referrers of %s: %w", s, m, err)
	}
	return nil
}

// deleteFallback deletes the referrers fallback tag of m, if there is one.
func (c *Converter) deleteFallback(ctx context.Context, r imageRef, m digest.Digest) error {
	tag := remote.FallbackTag(m)
	d, err := c.reg.Resolve(ctx, r.name+":"+tag)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.deleteTagged(ctx, r.name, tag, d.Digest)
}

// deleteTagged deletes a tag and the manifest d it names. Registries differ: some delete tags
// (and keep the manifest under its digest), some delete only by digest (and drop the tags
// with it): both are asked.
func (c *Converter) deleteTagged(ctx context.Context, name, tag string, d digest.Digest) error {
	err := c.reg.DeleteManifest(ctx, name+":"+tag)
	if err != nil && !errdefs.IsNotFound(err) && !errdefs.IsNotImplemented(err) {
		return err
	}
	return c.deleteIgnoringMissing(ctx, name+"@"+d.String())
}

// deleteIgnoringMissing deletes the manifest ref names; one already gone is no error.
func (c *Converter) deleteIgnoringMissing(ctx context.Context, ref string) error {
	err := c.reg.DeleteManifest(ctx, ref)
	if err == nil || errdefs.IsNotFound(err) {
		return nil
	}
	if errors.Is(err, errdefs.ErrNotImplemented) {
		return fmt.Errorf("%w; enable deletes in the registry (distribution: storage.delete.enabled)", err)
	}
	return err
}
