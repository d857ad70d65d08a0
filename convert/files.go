package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
)

// Bounds of reading an artifact's TOCs from the registry (a node's own bounds, fs.Limits, are
// the same): an artifact is pushed by whoever may push to the repository.
const (
	maxTOCCompressed = 64 << 20
	maxTOCJSON       = 256 << 20
)

// ArtifactFiles returns the regular files of the streaming artifact s in the repository name
// (host/repository) with their sizes: the union of its layers' TOCs, each checked against
// the TOC digest the manifest records. It also returns the artifact manifest. Whiteouts
// (".wh.") are not files.
func (c *Converter) ArtifactFiles(ctx context.Context, name string, s digest.Digest) (files map[string]int64, manifest ocispec.Manifest, err error) {
	defer func() { err = authError(err) }()
	r := imageRef{name: name}
	desc, err := c.reg.Resolve(ctx, r.at(s))
	if err != nil {
		return nil, manifest, err
	}
	raw, err := c.reg.FetchManifest(ctx, r.at(s), desc)
	if err != nil {
		return nil, manifest, err
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return nil, manifest, fmt.Errorf("parse artifact manifest %s: %w", s, err)
	}
	if manifest.ArtifactType != artifact.ArtifactType {
		return nil, manifest, fmt.Errorf("%s is not a streaming artifact (artifactType %q): %w", s, manifest.ArtifactType, ErrNotRunnable)
	}
	files = map[string]int64{}
	for i, l := range manifest.Layers {
		want, err := digest.Parse(l.Annotations[artifact.AnnotationTOCDigest])
		if err != nil {
			return nil, manifest, fmt.Errorf("artifact %s layer %d: TOC digest: %w", s, i, err)
		}
		toc, err := c.readTOC(ctx, r, l, want)
		if err != nil {
			return nil, manifest, fmt.Errorf("artifact %s layer %d: %w", s, i, err)
		}
		for _, e := range toc.Entries {
			name := strings.TrimPrefix(path.Clean("/"+e.Name), "/")
			if e.Type != "reg" || strings.HasPrefix(path.Base(name), ".wh.") {
				continue
			}
			files[name] = e.Size
		}
	}
	return files, manifest, nil
}

// readTOC reads the TOC of the eStargz blob l (footer, then the TOC member: two range reads)
// and checks it against want.
func (c *Converter) readTOC(ctx context.Context, r imageRef, l ocispec.Descriptor, want digest.Digest) (*estargz.JTOC, error) {
	if l.Size < artifact.FooterSize {
		return nil, fmt.Errorf("%d bytes is shorter than an eStargz footer", l.Size)
	}
	br, err := c.reg.BlobReader(ctx, r.at(l.Digest), l)
	if err != nil {
		return nil, err
	}
	defer br.Close()
	footer := make([]byte, artifact.FooterSize)
	if _, err := br.ReadAt(footer, l.Size-artifact.FooterSize); err != nil {
		return nil, fmt.Errorf("read footer: %w", err)
	}
	off, err := artifact.ParseFooter(footer)
	if err != nil {
		return nil, fmt.Errorf("footer: %w", err)
	}
	n := l.Size - artifact.FooterSize - off
	if off < 0 || n <= 0 || n > maxTOCCompressed {
		return nil, fmt.Errorf("TOC at %d of %d bytes: out of the blob or larger than %d MiB", off, l.Size, maxTOCCompressed>>20)
	}
	compressed := make([]byte, n)
	if _, err := br.ReadAt(compressed, off); err != nil {
		return nil, fmt.Errorf("read TOC: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("TOC: %w", err)
	}
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("TOC: %w", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, fmt.Errorf("TOC member holds %q, not %s", h.Name, estargz.TOCTarName)
	}
	js, err := io.ReadAll(io.LimitReader(tr, maxTOCJSON+1))
	if err != nil {
		return nil, fmt.Errorf("TOC: %w", err)
	}
	if len(js) > maxTOCJSON {
		return nil, fmt.Errorf("TOC larger than %d MiB", maxTOCJSON>>20)
	}
	if got := digest.FromBytes(js); got != want {
		return nil, fmt.Errorf("TOC digest %s, the manifest records %s", got, want)
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(js, &toc); err != nil {
		return nil, fmt.Errorf("parse TOC: %w", err)
	}
	return &toc, nil
}
