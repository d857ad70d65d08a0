package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/test/harness"
)

// EStargz returns img with every layer converted to byte-preserving eStargz (as a third-party
// eStargz image: the TOC digests annotate the layers in its own manifest), written under dir.
// The converted image must show exactly the same files, so Command and Want stay.
func EStargz(ctx context.Context, img *TestImage, dir string) (*TestImage, error) {
	out := *img
	out.Repository = img.Repository + "-estargz"
	out.Spec.Layers = nil
	for i, l := range img.Spec.Layers {
		src, err := os.Open(l.Path)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, fmt.Sprintf("estargz-%d-%s.tar.gz", i, l.Digest.Hex[:12]))
		dst, err := os.Create(path)
		if err != nil {
			src.Close()
			return nil, err
		}
		conv, err := convert.ConvertLayer(ctx, src, dst, convert.LayerOptions{})
		src.Close()
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("converting layer %d of %s: %w", i, img.Repository, err)
		}
		digest, err := v1.NewHash(conv.Digest.String())
		if err != nil {
			return nil, err
		}
		diffID, err := v1.NewHash(conv.DiffID.String())
		if err != nil {
			return nil, err
		}
		out.Spec.Layers = append(out.Spec.Layers, &harness.Layer{
			Path: path, Digest: digest, DiffID: diffID, Size: conv.Size,
			Annotations: map[string]string{
				artifact.AnnotationTOCDigest:        conv.TOCDigest.String(),
				artifact.AnnotationUncompressedSize: fmt.Sprint(conv.UncompressedSize),
			},
		})
	}
	return &out, nil
}
