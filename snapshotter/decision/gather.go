package decision

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/remote"
)

// Gather reads from reg what the decision for the image that ref names needs: what ref names,
// M (the platform manifest named manifest, or when that is empty the one SelectManifest
// picks) and its config's platform, then the artifact the index binds to M, or, when none is
// bound and p trusts referrers, M's referrers in the order of choice up to the first usable
// one. It stops where the rest cannot change the decision. An error means the registry could
// not be asked.
func Gather(ctx context.Context, reg *remote.Registry, ref string, manifest digest.Digest, p Policy) (Facts, error) {
	var f Facts
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return f, fmt.Errorf("image reference %q: %w", ref, err)
	}
	repo := named.Name()
	top, err := reg.Resolve(ctx, ref)
	if err != nil {
		return f, err
	}
	f.Top = top
	if artifact.IsIndex(top.MediaType) {
		b, err := reg.FetchManifest(ctx, ref, top)
		if err != nil {
			return f, err
		}
		f.Index = new(ocispec.Index)
		if err := json.Unmarshal(b, f.Index); err != nil {
			return f, fmt.Errorf("decode index %s: %w", top.Digest, err)
		}
	}
	mDesc, reason := SelectManifest(top, f.Index, manifest, p)
	if reason != "" {
		return f, nil
	}
	at := repo + "@" + mDesc.Digest.String()
	mBytes, err := reg.FetchManifest(ctx, at, mDesc)
	if err != nil {
		return f, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mBytes, &m); err != nil {
		return f, fmt.Errorf("decode manifest %s: %w", mDesc.Digest, err)
	}
	cfgBytes, err := reg.FetchBlob(ctx, at, m.Config)
	if err != nil {
		return f, err
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		return f, fmt.Errorf("decode image config: %w", err)
	}
	f.Manifest, f.ManifestDigest, f.Platform = &m, mDesc.Digest, cfg.Platform
	if !p.Platforms.Match(cfg.Platform) {
		return f, nil
	}
	platform := platforms.Format(platforms.Normalize(cfg.Platform))

	// A bound artifact: the index at the pulled reference names it for M.
	if d, ok := find(f.Index, mDesc.Digest); ok && d.Annotations[artifact.AnnotationBinding] != "" {
		f.Bound = &Artifact{}
		sd, err := digest.Parse(d.Annotations[artifact.AnnotationBinding])
		if err != nil {
			f.Bound.Err = fmt.Errorf("artifact digest %q: %w", d.Annotations[artifact.AnnotationBinding], err)
			return f, nil
		}
		f.Bound.Digest = sd
		if desc, listed := find(f.Index, sd); listed {
			f.Bound.Manifest, f.Bound.Err = readArtifact(ctx, reg, repo, desc)
		}
		return f, nil
	}
	if p.Trust != TrustReferrers {
		return f, nil
	}
	refs, err := reg.Referrers(ctx, repo, mDesc.Digest, artifact.ArtifactType)
	if err != nil {
		f.ReferrersErr = fmt.Errorf("cannot list referrers: %w", err)
		return f, nil
	}
	sort.SliceStable(refs, func(i, j int) bool {
		return artifact.Before(artifact.Candidate{Digest: refs[i].Digest, Created: artifact.Created(refs[i].Annotations)},
			artifact.Candidate{Digest: refs[j].Digest, Created: artifact.Created(refs[j].Annotations)})
	})
	for _, ref := range refs {
		a := Artifact{Digest: ref.Digest}
		a.Manifest, a.Err = readArtifact(ctx, reg, repo, ref)
		f.Referrers = append(f.Referrers, a)
		if a.Err == nil && artifact.Streams(*a.Manifest, mDesc.Digest, &m, platform) == nil {
			break // the first usable one is chosen: the others need not be read
		}
	}
	return f, nil
}

// readArtifact reads the streaming artifact desc.
func readArtifact(ctx context.Context, reg *remote.Registry, repo string, desc ocispec.Descriptor) (*ocispec.Manifest, error) {
	if desc.MediaType == "" {
		desc.MediaType = ocispec.MediaTypeImageManifest
	}
	b, err := reg.FetchManifest(ctx, repo+"@"+desc.Digest.String(), desc)
	if err != nil {
		return nil, err
	}
	var art ocispec.Manifest
	if err := json.Unmarshal(b, &art); err != nil {
		return nil, fmt.Errorf("decode artifact: %w", err)
	}
	return &art, nil
}
