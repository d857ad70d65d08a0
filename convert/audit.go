package convert

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
	"golang.org/x/sync/errgroup"
)

// Audit is the outcome of Verify for one artifact.
type Audit struct {
	Platform string             `json:"platform"`
	Subject  ocispec.Descriptor `json:"subject"`
	Artifact ocispec.Descriptor `json:"artifact"`
	Bound    bool               `json:"bound"`
	Layers   []LayerAudit       `json:"layers"`
	// Problems lists what is wrong; empty when the artifact is sound.
	Problems []string `json:"problems"`
}

// LayerAudit is the outcome for one layer.
type LayerAudit struct {
	Digest  digest.Digest `json:"digest"`
	Problem string        `json:"problem,omitempty"`
}

// Verify audits every streaming artifact of the image ref names: each layer decompresses to
// exactly the original layer's bytes (its diff_id in M's config) followed by nothing but the
// TOC, the TOC matches its digest and every chunk its TOC entry, the config's diff_ids are
// the layers', and a tag's binding names artifacts that exist and stream their manifests.
// It returns the audits, and an ErrVerifyFailed error when any found a problem.
func (c *Converter) Verify(ctx context.Context, ref string) (_ []Audit, err error) {
	defer func() { err = authError(err) }()
	r, err := parseReference(ref)
	if err != nil {
		return nil, err
	}
	im, err := c.loadImage(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	var (
		out    []Audit
		failed int
	)
	listed := map[digest.Digest]bool{}
	if im.index != nil {
		for _, d := range im.index.Manifests {
			listed[d.Digest] = true
		}
	}
	for _, pm := range im.manifests {
		if pm.raw == nil {
			continue
		}
		as, err := c.artifactsOf(ctx, r, pm)
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			au := Audit{Platform: platforms.Format(pm.platform), Subject: pm.desc, Artifact: a.Descriptor, Bound: a.Bound, Problems: []string{}}
			if a.Problem != "" {
				au.Problems = append(au.Problems, a.Problem)
			} else {
				c.auditLayers(ctx, r, pm, a, &au)
			}
			if a.Bound && !listed[a.Descriptor.Digest] {
				au.Problems = append(au.Problems, "the binding index names the artifact but does not list it (registry garbage collection may delete it)")
			}
			if len(au.Problems) > 0 {
				failed++
			}
			out = append(out, au)
		}
	}
	if failed > 0 {
		return out, fmt.Errorf("%d of %d streaming artifacts of %s have problems: %w", failed, len(out), r, ErrVerifyFailed)
	}
	return out, nil
}

// auditLayers checks S's config and every layer, layers in parallel.
func (c *Converter) auditLayers(ctx context.Context, r imageRef, pm *platformManifest, a Artifact, au *Audit) {
	s := a.manifest
	cfgRaw, err := c.reg.FetchBlob(ctx, r.at(a.Descriptor.Digest), s.Config)
	if err != nil {
		au.Problems = append(au.Problems, fmt.Sprintf("read the artifact config: %v", err))
		return
	}
	var cfg struct {
		RootFS ocispec.RootFS `json:"rootfs"`
	}
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil || len(cfg.RootFS.DiffIDs) != len(s.Layers) {
		au.Problems = append(au.Problems, "the artifact config does not list one diff_id per layer")
		return
	}
	au.Layers = make([]LayerAudit, len(s.Layers))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.parallelism)
	for i, l := range s.Layers {
		au.Layers[i].Digest = l.Digest
		g.Go(func() error {
			err := c.auditLayer(gctx, r, l, pm.diffIDs[i], cfg.RootFS.DiffIDs[i])
			if err != nil {
				mu.Lock()
				au.Layers[i].Problem = err.Error()
				au.Problems = append(au.Problems, fmt.Sprintf("layer %d (%s): %v", i+1, l.Digest, err))
				mu.Unlock()
			}
			return ctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		au.Problems = append(au.Problems, err.Error())
	}
}

// auditLayer downloads one artifact layer to a temporary file and checks it.
func (c *Converter) auditLayer(ctx context.Context, r imageRef, l ocispec.Descriptor, originalDiffID, diffID digest.Digest) error {
	if got := l.Annotations[artifact.AnnotationOriginalDiffID]; got != originalDiffID.String() {
		return fmt.Errorf("annotated with original diff_id %q, the image's is %s", got, originalDiffID)
	}
	origSize, err := strconv.ParseInt(l.Annotations[artifact.AnnotationOriginalSize], 10, 64)
	if err != nil {
		return fmt.Errorf("bad %s annotation: %w", artifact.AnnotationOriginalSize, err)
	}
	tocDigest, err := digest.Parse(l.Annotations[artifact.AnnotationTOCDigest])
	if err != nil {
		return fmt.Errorf("bad %s annotation: %w", artifact.AnnotationTOCDigest, err)
	}
	br, err := c.reg.BlobReader(ctx, r.name, l)
	if err != nil {
		return err
	}
	defer br.Close()
	src := newSequentialReader(ctx, br)
	defer src.Close()
	f, err := os.CreateTemp(c.opts.tempDir, "rill-verify-*.estargz")
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != l.Digest || n != l.Size {
		return fmt.Errorf("the registry's blob hashes to %s (%d bytes), not to its digest", got, n)
	}
	if err := VerifyLayer(ctx, io.NewSectionReader(f, 0, n), Expected{OriginalDiffID: originalDiffID, OriginalSize: origSize, TOCDigest: tocDigest}); err != nil {
		return err
	}
	// The artifact config's diff_id is the whole decompressed layer, TOC included.
	zr, err := gzip.NewReader(io.NewSectionReader(f, 0, n))
	if err != nil {
		return err
	}
	defer zr.Close()
	dh := sha256.New()
	if _, err := io.Copy(dh, &ctxReader{ctx: ctx, r: zr}); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, dh); got != diffID {
		return fmt.Errorf("decompresses to %s, not to the artifact config's diff_id %s", got, diffID)
	}
	return nil
}
