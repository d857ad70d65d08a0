package convert

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
)

// Expected is what a converted layer must match: the original's diff_id and length, and the
// TOC digest recorded in the artifact.
type Expected struct {
	OriginalDiffID digest.Digest
	OriginalSize   int64
	TOCDigest      digest.Digest
}

// VerifyLayer checks an eStargz layer against the contract: the TOC has the recorded digest
// and the estargz reader accepts it, every chunk of every file matches its digest in the
// TOC, and the layer decompresses to exactly the original's tar bytes (length and diff_id)
// followed by nothing but the TOC.
func VerifyLayer(ctx context.Context, blob *io.SectionReader, want Expected) error {
	r, err := openEStargz(blob)
	if err != nil {
		return fmt.Errorf("not a valid eStargz layer: %w", err)
	}
	verifier, err := r.VerifyTOC(want.TOCDigest)
	if err != nil {
		return fmt.Errorf("TOC does not match its recorded digest %s: %w", want.TOCDigest, err)
	}
	if err := verifyChunks(ctx, r, verifier); err != nil {
		return err
	}
	// The TOC as a node decodes it: one it accepts, and whose entries say what the tar headers
	// say (the node serves names, modes, owners, xattrs and times from the TOC).
	toc, tocOffset, _, err := artifact.ReadTOC(blob, blob.Size(), 256<<20)
	if err != nil {
		return fmt.Errorf("not a valid eStargz layer: %w", err)
	}
	if _, err := artifact.NewTree(toc, tocOffset); err != nil {
		return fmt.Errorf("no node would stream it: %w", err)
	}

	payload, err := estargz.Unpack(blob, new(estargz.GzipDecompressor))
	if err != nil {
		return fmt.Errorf("decompress layer: %w", err)
	}
	defer payload.Close()
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := artifact.CheckHeaders(toc, pr)
		io.Copy(io.Discard, pr)
		checked <- err
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(h, pw), &ctxReader{ctx: ctx, r: payload})
	pw.Close()
	metaErr := <-checked
	if err != nil {
		return fmt.Errorf("decompress layer: %w", err)
	}
	if n != want.OriginalSize {
		return fmt.Errorf("layer holds %d tar bytes before its TOC, the original %d", n, want.OriginalSize)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != want.OriginalDiffID {
		return fmt.Errorf("layer's tar bytes hash to %s, not to the original diff_id %s", got, want.OriginalDiffID)
	}
	if metaErr != nil {
		return fmt.Errorf("the TOC's metadata does not match the tar: %w", metaErr)
	}
	return nil
}

// verifyChunks reads every chunk of every regular file through the TOC verifier.
func verifyChunks(ctx context.Context, r *estargz.Reader, verifier estargz.TOCEntryVerifier) error {
	root, ok := r.Lookup("")
	if !ok {
		return errors.New("TOC has no root directory")
	}
	var walk func(dir *estargz.TOCEntry) error
	walk = func(dir *estargz.TOCEntry) error {
		var walkErr error
		dir.ForeachChild(func(_ string, ent *estargz.TOCEntry) bool {
			if err := ctx.Err(); err != nil {
				walkErr = err
				return false
			}
			switch ent.Type {
			case "dir":
				walkErr = walk(ent)
			case "reg":
				walkErr = verifyFile(r, verifier, ent)
			}
			return walkErr == nil
		})
		return walkErr
	}
	return walk(root)
}

func verifyFile(r *estargz.Reader, verifier estargz.TOCEntryVerifier, ent *estargz.TOCEntry) error {
	if ent.Size == 0 {
		return nil
	}
	sr, err := r.OpenFile(ent.Name)
	if err != nil {
		return fmt.Errorf("open %s: %w", ent.Name, err)
	}
	for off := int64(0); off < ent.Size; {
		ce, ok := r.ChunkEntryForOffset(ent.Name, off)
		if !ok {
			return fmt.Errorf("%s: no chunk at offset %d", ent.Name, off)
		}
		v, err := verifier.Verifier(ce)
		if err != nil {
			return fmt.Errorf("%s: chunk at %d: %w", ent.Name, off, err)
		}
		if _, err := io.Copy(v, io.NewSectionReader(sr, ce.ChunkOffset, ce.ChunkSize)); err != nil {
			return fmt.Errorf("%s: read chunk at %d: %w", ent.Name, off, err)
		}
		if !v.Verified() {
			return fmt.Errorf("%s: chunk at %d does not match its digest in the TOC", ent.Name, off)
		}
		if ce.ChunkSize <= 0 {
			return fmt.Errorf("%s: chunk at %d has size %d", ent.Name, off, ce.ChunkSize)
		}
		off = ce.ChunkOffset + ce.ChunkSize
	}
	return nil
}
