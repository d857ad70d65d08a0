// Package images builds the images the e2e tests and the demo run, without network:
//
//   - the fixture image: a static checker binary and layers covering what an unpacker must get
//     right (modes with special bits, owners, xattrs, symlinks, hardlinks, whiteouts, an opaque
//     directory, a file of hundreds of MB). Its expected output is computed from the layers
//     themselves (manifest.Tree), never written down by hand;
//   - the debian image: a bookworm minbase root file system from debootstrap (cached), checked
//     in the container against the md5sums of every installed package.
package images

import (
	"context"
	"fmt"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/manifest"
)

// TestImage is an image to push, with the command to run in it and what it must print.
type TestImage struct {
	Repository string // path in the registry, e.g. "rill/fixture:v1"
	Spec       harness.ImageSpec
	Command    []string // the full command line to run in a container
	Want       string   // the exact stdout Command must print
}

// Push pushes the image to the registry at host ("127.0.0.1:PORT").
func (ti *TestImage) Push(ctx context.Context, host string) (*harness.PushedImage, error) {
	return harness.Push(ctx, host+"/"+ti.Repository, ti.Spec)
}

// expectedManifest applies the layers in order, as an unpacker must, and returns the canonical
// manifest of the paths at and below roots.
func expectedManifest(layers []*harness.Layer, roots ...string) (string, error) {
	tree := manifest.NewTree()
	for _, l := range layers {
		r, err := l.Uncompressed()
		if err != nil {
			return "", err
		}
		err = tree.ApplyLayer(r)
		r.Close()
		if err != nil {
			return "", fmt.Errorf("applying layer %s: %w", l.Path, err)
		}
	}
	entries, err := tree.Entries(roots...)
	if err != nil {
		return "", err
	}
	return manifest.Text(entries), nil
}
