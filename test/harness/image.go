package harness

import (
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageSpec is a single-platform (linux/amd64) image: its layers, bottom first, and the runtime
// part of its config.
type ImageSpec struct {
	Layers []*Layer
	Config v1.Config
	// Architecture of the image (linux); empty means amd64.
	Architecture string
}

// PushedImage is an image in the registry.
type PushedImage struct {
	Ref            string    // "HOST/REPO:TAG"
	ManifestDigest v1.Hash   // digest of the image manifest
	ConfigDigest   v1.Hash   // digest of the image config blob
	DiffIDs        []v1.Hash // uncompressed digests of the layers, bottom first
	ChainIDs       []v1.Hash // chain IDs (the names of the committed snapshots), bottom first
	Size           int64     // compressed bytes of all layers
}

// Push assembles an OCI image from spec and pushes it to ref (a registry on loopback, plain
// HTTP); opts add to the push's options (remote.WithAuth for a registry that needs it).
func Push(ctx context.Context, ref string, spec ImageSpec, opts ...remote.Option) (*PushedImage, error) {
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
	}
	img, pushed, err := assemble(ref, spec)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(tag, img, append([]remote.Option{remote.WithContext(ctx)}, opts...)...); err != nil {
		return nil, fmt.Errorf("pushing %s to the registry: %w", ref, err)
	}
	return pushed, nil
}

// PushIndex pushes the images of specs (of different architectures) and, at ref, an index of
// them. It returns the pushed images in the order of specs.
func PushIndex(ctx context.Context, ref string, specs ...ImageSpec) ([]*PushedImage, error) {
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var pushed []*PushedImage
	for _, spec := range specs {
		img, p, err := assemble(ref, spec)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: archOf(spec)},
		}})
		pushed = append(pushed, p)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("pushing index %s to the registry: %w", ref, err)
	}
	return pushed, nil
}

func archOf(spec ImageSpec) string {
	if spec.Architecture == "" {
		return "amd64"
	}
	return spec.Architecture
}

// assemble builds the OCI image of spec.
func assemble(ref string, spec ImageSpec) (v1.Image, *PushedImage, error) {
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: archOf(spec),
		OS:           "linux",
		Created:      v1.Time{Time: time.Unix(1700000000, 0).UTC()},
		Config:       spec.Config,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("setting the image config: %w", err)
	}
	pushed := &PushedImage{Ref: ref}
	for _, l := range spec.Layers {
		img, err = mutate.Append(img, mutate.Addendum{Layer: l.V1(), MediaType: types.OCILayer, Annotations: l.Annotations})
		if err != nil {
			return nil, nil, fmt.Errorf("adding layer %s: %w", l.Path, err)
		}
		pushed.DiffIDs = append(pushed.DiffIDs, l.DiffID)
		pushed.Size += l.Size
	}
	pushed.ChainIDs = ChainIDs(pushed.DiffIDs)
	if pushed.ManifestDigest, err = img.Digest(); err != nil {
		return nil, nil, fmt.Errorf("computing the manifest digest: %w", err)
	}
	if pushed.ConfigDigest, err = img.ConfigName(); err != nil {
		return nil, nil, fmt.Errorf("computing the config digest: %w", err)
	}
	return img, pushed, nil
}

// ChainIDs returns the chain IDs of a stack of layers given their diff IDs, bottom first:
// chain(0) = diffID(0), chain(n) = sha256(chain(n-1) + " " + diffID(n)) (OCI image spec).
func ChainIDs(diffIDs []v1.Hash) []v1.Hash {
	chain := make([]v1.Hash, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			chain[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(chain[i-1].String() + " " + d.String()))
		chain[i] = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum)}
	}
	return chain
}
