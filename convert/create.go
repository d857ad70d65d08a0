package convert

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// CreateOptions are the choices of one Create.
type CreateOptions struct {
	// Bind binds the artifacts to the tag (the default of the CLI). Ignored when the
	// reference has a digest: such images get referrers only.
	Bind bool
	// Force rebuilds artifacts that exist, and removes the ones they replace.
	Force bool
	// Profile is the prefetch profile (paths in first-access order), nil for none.
	Profile []string
}

// CreateResult says what Create did.
type CreateResult struct {
	Reference string
	// Artifacts has one entry per platform manifest that has a streaming platform.
	Artifacts []CreatedArtifact
	// Bound says that the tag binds the artifacts; Index is then the binding index.
	Bound bool
	Index ocispec.Descriptor
	// Unchanged says that nothing was pushed: every artifact existed, bound as asked.
	Unchanged bool
	// ProfileKept is how many paths of the prefetch profile were recorded (the end of a
	// profile too large for the manifest is dropped).
	ProfileKept int
	// Removed lists artifacts that --force replaced and deleted.
	Removed []digest.Digest
	// KeptBoundElsewhere lists artifacts that --force replaced but kept, because another tag
	// of the repository is bound to them.
	KeptBoundElsewhere []digest.Digest
}

// CreatedArtifact is the artifact of one platform manifest.
type CreatedArtifact struct {
	Platform string
	Subject  ocispec.Descriptor
	Artifact ocispec.Descriptor
	// Existing says that the artifact was there already and was not rebuilt.
	Existing bool
	// Reprofiled is set when the artifact is an existing one's manifest with a new prefetch
	// profile (its layers reused, not converted again): the digest of that existing one,
	// which is kept for the tags bound to it.
	Reprofiled digest.Digest
	Layers     []LayerResult
}

// LayerResult pairs an original layer with its conversion.
type LayerResult struct {
	Original  ocispec.Descriptor
	Converted Layer
}

// Create builds and pushes the streaming artifacts of the image ref names: one per platform
// manifest whose platform is a streaming platform. Artifacts that exist are kept (unless
// opts.Force); with opts.Bind and a tag, the tag is then bound to them.
//
// Nothing a node would use is pushed before everything it depends on is in the registry:
// layer blobs, then configs, then artifact manifests, then the binding. The binding is
// pushed only if the tag still names what was converted.
func (c *Converter) Create(ctx context.Context, ref string, opts CreateOptions) (res *CreateResult, err error) {
	defer func() { err = authError(err) }()
	r, err := parseReference(ref)
	if err != nil {
		return nil, err
	}
	bind := opts.Bind && r.digest == ""
	im, err := c.loadImage(ctx, r, c.opts.matcher())
	if err != nil {
		return nil, err
	}
	selected, err := c.selectManifests(im)
	if err != nil {
		return nil, err
	}
	res = &CreateResult{Reference: r.String()}
	var profile string
	if len(opts.Profile) > 0 {
		if profile, res.ProfileKept, err = artifact.EncodeProfile(opts.Profile); err != nil {
			return nil, err
		}
		if res.ProfileKept < len(opts.Profile) {
			c.opts.log.Warnf("the prefetch profile lists %d paths; only the first %d fit in the artifact manifest", len(opts.Profile), res.ProfileKept)
		}
	}

	// Existing artifacts, and what to build.
	var (
		build      []*platformManifest
		replaced   []digest.Digest
		existing   = map[digest.Digest][]Artifact{}
		reprofiled int
	)
	for _, pm := range selected {
		as, err := c.artifactsOf(ctx, r, pm)
		if err != nil {
			return nil, err
		}
		existing[pm.desc.Digest] = as
		if a := chosen(as); a != nil && !opts.Force {
			if profile != "" && a.manifest.Annotations[artifact.AnnotationPrefetch] != profile {
				// A new profile for an existing artifact: no conversion, the old one stays.
				ca, err := c.reprofile(ctx, r, pm, a, profile)
				if err != nil {
					return nil, err
				}
				res.Artifacts = append(res.Artifacts, ca)
				reprofiled++
				continue
			}
			res.Artifacts = append(res.Artifacts, CreatedArtifact{Platform: platforms.Format(pm.platform), Subject: pm.desc, Artifact: a.Descriptor, Existing: true})
			continue
		}
		for _, a := range as {
			replaced = append(replaced, a.Descriptor.Digest)
		}
		build = append(build, pm)
	}

	if len(build) > 0 {
		built, err := c.build(ctx, r, build, profile)
		if err != nil {
			return nil, err
		}
		res.Artifacts = append(res.Artifacts, built...)
	}
	slices.SortStableFunc(res.Artifacts, func(a, b CreatedArtifact) int {
		return slices.IndexFunc(selected, func(pm *platformManifest) bool { return pm.desc.Digest == a.Subject.Digest }) -
			slices.IndexFunc(selected, func(pm *platformManifest) bool { return pm.desc.Digest == b.Subject.Digest })
	})

	if bind {
		changed, desc, err := c.bind(ctx, im, res.Artifacts)
		if err != nil {
			return nil, err
		}
		res.Bound, res.Index = true, desc
		res.Unchanged = !changed && len(build)+reprofiled == 0
	} else {
		res.Unchanged = len(build)+reprofiled == 0
	}

	// What --force replaced goes last, once the new artifacts are in place; but an artifact
	// another tag is bound to stays, else that tag's nodes would lose it.
	var elsewhere map[digest.Digest]string
	if len(replaced) > 0 {
		elsewhere = c.boundElsewhere(ctx, r, replaced)
	}
	for _, d := range replaced {
		if slices.ContainsFunc(res.Artifacts, func(a CreatedArtifact) bool { return a.Artifact.Digest == d }) {
			continue
		}
		if tag, ok := elsewhere[d]; ok {
			c.opts.log.Infof("kept the replaced artifact %s: the tag %q is bound to it", d, tag)
			res.KeptBoundElsewhere = append(res.KeptBoundElsewhere, d)
			continue
		}
		var subject digest.Digest
		for m, as := range existing {
			if slices.ContainsFunc(as, func(a Artifact) bool { return a.Descriptor.Digest == d }) {
				subject = m
			}
		}
		if err := c.removeArtifact(ctx, r, subject, d); err != nil {
			c.opts.log.WithError(err).Warnf("could not remove the replaced artifact %s", d)
			continue
		}
		res.Removed = append(res.Removed, d)
	}
	return res, nil
}

// selectManifests returns the platform manifests of im to convert, or why there are none.
func (c *Converter) selectManifests(im *image) ([]*platformManifest, error) {
	m := c.opts.matcher()
	var out []*platformManifest
	for _, pm := range im.manifests {
		if m.Match(pm.platform) {
			out = append(out, pm)
		}
	}
	if len(out) == 0 {
		if im.index != nil {
			return nil, fmt.Errorf("%s lists %s; the streaming platforms are %s: %w", im.ref, platformList(im.manifests), c.platformNames(), ErrNoSupportedPlatform)
		}
		return nil, fmt.Errorf("%s is for %s; the streaming platforms are %s: %w", im.ref, platformList(im.manifests), c.platformNames(), ErrUnsupportedPlatform)
	}
	for _, pm := range out {
		if err := pm.checkConvertible(); err != nil {
			return nil, fmt.Errorf("%s: %w", im.ref, err)
		}
	}
	return out, nil
}

func (c *Converter) platformNames() string {
	var s []string
	for _, p := range c.opts.platforms {
		s = append(s, platforms.Format(p))
	}
	return fmt.Sprint(s)
}

// build converts the layers of ms and pushes their configs and artifact manifests.
func (c *Converter) build(ctx context.Context, r imageRef, ms []*platformManifest, profile string) ([]CreatedArtifact, error) {
	var jobs []layerJob
	for _, pm := range ms {
		for i, l := range pm.manifest.Layers {
			jobs = append(jobs, layerJob{original: l, diffID: pm.diffIDs[i], platform: platforms.Format(pm.platform), index: i, count: len(pm.manifest.Layers)})
		}
	}
	layers, err := c.convertLayers(ctx, r, jobs)
	if err != nil {
		return nil, err
	}
	lo, _ := c.opts.layer.withDefaults()
	created := c.opts.now()
	var out []CreatedArtifact
	for _, pm := range ms {
		spec := artifactSpec{subject: pm.desc, platform: pm.platform, config: pm.config, chunkSize: lo.ChunkSize, profile: profile, created: created}
		ca := CreatedArtifact{Platform: platforms.Format(pm.platform), Subject: pm.desc}
		for _, l := range pm.manifest.Layers {
			spec.layers = append(spec.layers, convertedLayer{original: l, layer: layers[l.Digest]})
			ca.Layers = append(ca.Layers, LayerResult{Original: l, Converted: layers[l.Digest]})
		}
		config, manifest, err := buildArtifact(spec)
		if err != nil {
			return nil, err
		}
		cd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
		if err := c.reg.PushBlob(ctx, r.name, cd, bytes.NewReader(config)); err != nil {
			return nil, fmt.Errorf("push the artifact config: %w", err)
		}
		sd := digest.FromBytes(manifest)
		if ca.Artifact, err = c.reg.PushManifest(ctx, r.at(sd), ocispec.MediaTypeImageManifest, manifest); err != nil {
			return nil, fmt.Errorf("push the artifact manifest: %w", err)
		}
		ca.Artifact.ArtifactType = artifact.ArtifactType
		c.opts.log.WithFields(map[string]any{"platform": ca.Platform, "subject": pm.desc.Digest, "artifact": sd}).Info("pushed the streaming artifact")
		out = append(out, ca)
	}
	return out, nil
}

// bind pushes the binding index of im with as at the tag, unless the tag already says so.
// It refuses when the tag no longer names what im was read from.
func (c *Converter) bind(ctx context.Context, im *image, as []CreatedArtifact) (bool, ocispec.Descriptor, error) {
	bindings := map[digest.Digest]ocispec.Descriptor{}
	for m, s := range currentBindings(im) {
		d := ocispec.Descriptor{Digest: s}
		if im.index != nil {
			for _, e := range im.index.Manifests {
				if e.Digest == s {
					d = e
				}
			}
		}
		bindings[m] = d
	}
	for _, a := range as {
		bindings[a.Subject.Digest] = a.Artifact
	}
	raw, err := bindingIndex(im, bindings)
	if err != nil {
		return false, ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	if desc.Digest == im.desc.Digest {
		return false, desc, nil
	}
	now, err := c.reg.Resolve(ctx, im.ref.tagged())
	if err != nil {
		return false, ocispec.Descriptor{}, err
	}
	if now.Digest != im.desc.Digest {
		return false, ocispec.Descriptor{}, fmt.Errorf("%s now names %s, not %s; the artifacts are pushed as referrers, run create again to bind: %w", im.ref.tagged(), now.Digest, im.desc.Digest, ErrTagMoved)
	}
	if _, err := c.reg.PushManifest(ctx, im.ref.tagged(), ocispec.MediaTypeImageIndex, raw); err != nil {
		return false, ocispec.Descriptor{}, fmt.Errorf("bind the tag: %w", err)
	}
	return true, desc, nil
}
