package convert

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// The binding index (see the package documentation): what the tag names once artifacts are
// bound. It lists the same platform manifests with the same digests; each M that has an
// artifact S carries artifact.AnnotationBinding=<digest of S>, and every S is listed too (so
// that registry garbage collection keeps it) under a platform no node matches.

// unboundIndex returns the index im names without rill's bindings: its artifact entries
// dropped and binding annotations removed. For a single manifest it is an index of that one
// manifest with its platform.
func unboundIndex(im *image) ocispec.Index {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	if im.index == nil {
		idx.Manifests = []ocispec.Descriptor{im.manifests[0].desc}
		return idx
	}
	idx.ArtifactType = im.index.ArtifactType
	idx.Subject = im.index.Subject
	idx.Annotations = maps.Clone(im.index.Annotations)
	delete(idx.Annotations, artifact.AnnotationBoundFrom)
	if len(idx.Annotations) == 0 {
		idx.Annotations = nil
	}
	for _, d := range im.index.Manifests {
		if d.ArtifactType == artifact.ArtifactType || (d.Platform != nil && platformEqual(*d.Platform, artifactPlatform) && d.Annotations[artifact.AnnotationSubject] != "") {
			continue
		}
		if _, ok := d.Annotations[artifact.AnnotationBinding]; ok {
			d.Annotations = maps.Clone(d.Annotations)
			delete(d.Annotations, artifact.AnnotationBinding)
			if len(d.Annotations) == 0 {
				d.Annotations = nil
			}
		}
		idx.Manifests = append(idx.Manifests, d)
	}
	return idx
}

// boundFrom is the digest of what the tag named before rill bound it.
func boundFrom(im *image) digest.Digest {
	if im.index != nil {
		if d, err := digest.Parse(im.index.Annotations[artifact.AnnotationBoundFrom]); err == nil {
			return d
		}
	}
	return im.desc.Digest
}

// bindingIndex returns the binding index of im with bindings (M digest → S descriptor),
// which replace any the tag had. It is pure: the same input gives the same bytes.
func bindingIndex(im *image, bindings map[digest.Digest]ocispec.Descriptor) ([]byte, error) {
	idx := unboundIndex(im)
	if idx.Annotations == nil {
		idx.Annotations = map[string]string{}
	}
	idx.Annotations[artifact.AnnotationBoundFrom] = boundFrom(im).String()
	var artifacts []ocispec.Descriptor
	for i, d := range idx.Manifests {
		s, ok := bindings[d.Digest]
		if !ok {
			continue
		}
		d.Annotations = maps.Clone(d.Annotations)
		if d.Annotations == nil {
			d.Annotations = map[string]string{}
		}
		d.Annotations[artifact.AnnotationBinding] = s.Digest.String()
		idx.Manifests[i] = d
		p := artifactPlatform
		artifacts = append(artifacts, ocispec.Descriptor{
			MediaType:    ocispec.MediaTypeImageManifest,
			ArtifactType: artifact.ArtifactType,
			Digest:       s.Digest,
			Size:         s.Size,
			Platform:     &p,
			Annotations:  map[string]string{artifact.AnnotationSubject: d.Digest.String()},
		})
	}
	idx.Manifests = append(idx.Manifests, artifacts...)
	return json.MarshalIndent(idx, "", "  ")
}

// currentBindings returns the bindings of the tag's index (M digest → S digest).
func currentBindings(im *image) map[digest.Digest]digest.Digest {
	out := map[digest.Digest]digest.Digest{}
	for _, pm := range im.manifests {
		if pm.bound != "" {
			out[pm.desc.Digest] = pm.bound
		}
	}
	return out
}

// unbind puts back at the tag what it named before rill bound it: the original index or
// manifest by its digest while the registry still has it, else the index rebuilt without
// the bindings. It is a no-op when the tag is not bound.
func (c *Converter) unbind(ctx context.Context, im *image) error {
	if !im.isBinding() {
		return nil
	}
	from := boundFrom(im)
	if from != im.desc.Digest {
		for _, pm := range im.manifests {
			if pm.desc.Digest == from && pm.raw != nil { // a single manifest was bound
				_, err := c.reg.PushManifest(ctx, im.ref.tagged(), pm.desc.MediaType, pm.raw)
				return err
			}
		}
		if d, err := c.reg.Resolve(ctx, im.ref.at(from)); err == nil {
			if raw, err := c.reg.FetchManifest(ctx, im.ref.at(from), d); err == nil {
				_, err = c.reg.PushManifest(ctx, im.ref.tagged(), d.MediaType, raw)
				return err
			}
		}
	}
	idx := unboundIndex(im)
	raw, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	if _, err := c.reg.PushManifest(ctx, im.ref.tagged(), ocispec.MediaTypeImageIndex, raw); err != nil {
		return fmt.Errorf("restore the tag without bindings: %w", err)
	}
	return nil
}
