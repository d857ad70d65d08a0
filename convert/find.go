package convert

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// Artifact is a streaming artifact S of one platform manifest M.
type Artifact struct {
	// Subject is M's descriptor (with its platform).
	Subject ocispec.Descriptor `json:"subject"`
	// Descriptor is S's descriptor.
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Platform   string             `json:"platform"`
	Format     string             `json:"format"`
	Version    string             `json:"version"`
	Created    time.Time          `json:"created,omitzero"`
	// Size is the total size of S: manifest, config and layers.
	Size int64 `json:"size"`
	// OriginalSize is the total size of M: manifest, config and layers.
	OriginalSize int64 `json:"originalSize"`
	// Bound says that the index at the tag binds S to M; else S is a referrer only.
	Bound bool `json:"bound"`
	// ProfileEntries is the number of paths in S's prefetch profile.
	ProfileEntries int `json:"profileEntries"`
	// Problem says why S does not stream M ("" when it does); such artifacts are never
	// chosen.
	Problem string `json:"problem,omitempty"`

	manifest ocispec.Manifest
}

// artifactsOf returns M's streaming artifacts: the one the tag binds, if any, and its
// referrers of type artifact.ArtifactType, in the deterministic order of choice: usable before
// unusable, bound first, then newest created, then lowest digest.
func (c *Converter) artifactsOf(ctx context.Context, ref imageRef, pm *platformManifest) ([]Artifact, error) {
	refs, err := c.reg.Referrers(ctx, ref.name, pm.desc.Digest, artifact.ArtifactType)
	if err != nil {
		return nil, err
	}
	descs := map[digest.Digest]ocispec.Descriptor{}
	for _, d := range refs {
		descs[d.Digest] = d
	}
	if pm.bound != "" {
		if _, ok := descs[pm.bound]; !ok {
			descs[pm.bound] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: pm.bound}
		}
	}
	var out []Artifact
	for _, d := range descs {
		a, err := c.readArtifact(ctx, ref, pm, d)
		if errdefs.IsNotFound(err) {
			// Listed (a stale fallback entry, or a binding to a deleted artifact) but gone.
			out = append(out, Artifact{Subject: pm.desc, Descriptor: d, Bound: d.Digest == pm.bound, Problem: "the artifact manifest is missing from the registry"})
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	sortArtifacts(out)
	return out, nil
}

// sortArtifacts puts as in the order of choice (artifact.Before).
func sortArtifacts(as []Artifact) {
	sort.Slice(as, func(i, j int) bool { return artifact.Before(as[i].candidate(), as[j].candidate()) })
}

func (a Artifact) candidate() artifact.Candidate {
	return artifact.Candidate{Digest: a.Descriptor.Digest, Created: a.Created, Bound: a.Bound, Usable: a.Problem == ""}
}

// chosen returns the artifact nodes use for M: the first usable one, or nil.
func chosen(as []Artifact) *Artifact {
	if len(as) > 0 && as[0].Problem == "" {
		return &as[0]
	}
	return nil
}

// readArtifact fetches S (by digest; the size is learnt when unknown) and checks it against M.
func (c *Converter) readArtifact(ctx context.Context, ref imageRef, pm *platformManifest, d ocispec.Descriptor) (Artifact, error) {
	if d.Size <= 0 {
		rd, err := c.reg.Resolve(ctx, ref.at(d.Digest))
		if err != nil {
			return Artifact{}, err
		}
		d.Size, d.MediaType = rd.Size, rd.MediaType
	}
	raw, err := c.reg.FetchManifest(ctx, ref.at(d.Digest), d)
	if err != nil {
		return Artifact{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Artifact{Subject: pm.desc, Descriptor: d, Problem: fmt.Sprintf("not a manifest: %v", err)}, nil
	}
	a := Artifact{
		Subject:    pm.desc,
		Descriptor: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: m.ArtifactType, Digest: d.Digest, Size: d.Size},
		Platform:   m.Annotations[artifact.AnnotationPlatform],
		Format:     m.Annotations[artifact.AnnotationFormat],
		Version:    m.Annotations[artifact.AnnotationVersion],
		Bound:      d.Digest == pm.bound,
		Size:       d.Size + m.Config.Size,
		manifest:   m,
	}
	a.Created = artifact.Created(m.Annotations)
	for _, l := range m.Layers {
		a.Size += l.Size
	}
	if p := m.Annotations[artifact.AnnotationPrefetch]; p != "" {
		if paths, err := artifact.DecodeProfile(p); err == nil {
			a.ProfileEntries = len(paths)
		}
	}
	var image *ocispec.Manifest // M's layers, when read
	if pm.raw != nil {
		a.OriginalSize = pm.desc.Size + pm.manifest.Config.Size
		for _, l := range pm.manifest.Layers {
			a.OriginalSize += l.Size
		}
		image = &pm.manifest
	}
	platform := "" // M's platform, when known
	if pm.raw != nil || pm.desc.Platform != nil {
		platform = platforms.Format(pm.platform)
	}
	if err := artifact.Streams(m, pm.desc.Digest, image, platform); err != nil {
		a.Problem = err.Error()
	}
	return a, nil
}
