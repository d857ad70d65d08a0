package harness

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// SandboxRepository is where the harness pushes the pod sandbox ("pause") image, which
// containerd's CRI config pins (pinned_images.sandbox).
const SandboxRepository = "rill/pause:v1"

// buildSandboxImage compiles test/cmd/pause (static) and returns a one-layer image that runs it.
func buildSandboxImage(ctx context.Context, repoRoot, dir string) (ImageSpec, error) {
	bin := filepath.Join(dir, "pause")
	if err := BuildGo(ctx, repoRoot, "./test/cmd/pause", bin, true); err != nil {
		return ImageSpec{}, fmt.Errorf("building the pause binary: %w", err)
	}
	layer, err := SingleFileLayer(filepath.Join(dir, "pause-layer.tar.gz"), bin, "pause")
	if err != nil {
		return ImageSpec{}, err
	}
	return ImageSpec{Layers: []*Layer{layer}, Config: v1.Config{Entrypoint: []string{"/pause"}}}, nil
}

// SingleFileLayer writes a layer holding the executable src as /name (mode 0755, root).
func SingleFileLayer(layerPath, src, name string) (*Layer, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", src, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", src, err)
	}
	w, err := NewLayerWriter(layerPath, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: st.Size(),
		ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX,
	}
	if err := w.Add(hdr, f); err != nil {
		return nil, err
	}
	return w.Close()
}
