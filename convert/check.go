package convert

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// checkConverted is the check Create makes of every layer it converted before pushing it, in
// one pass over the result: the estargz reader accepts it and finds the TOC with the digest
// recorded, the first OriginalSize decompressed bytes hash to the original diff_id (the
// layer is byte-preserving, as written, not just as the converter counted), and the whole
// decompressed layer to the diff_id its config will name.
//
// It leaves out what VerifyLayer adds (reading every chunk through the TOC against its
// digest, which the estargz writer computed from the same bytes): that costs more than the
// conversion itself. rill verify, and WithChunkVerification, do the full check.
func checkConverted(ctx context.Context, blob *io.SectionReader, l Layer) error {
	r, err := openEStargz(blob)
	if err != nil {
		return fmt.Errorf("the estargz reader refuses it: %w", err)
	}
	if _, err := r.VerifyTOC(l.TOCDigest); err != nil {
		return fmt.Errorf("TOC does not match its digest %s: %w", l.TOCDigest, err)
	}
	zr, err := gzip.NewReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer zr.Close()
	whole, prefix := sha256.New(), sha256.New()
	n, err := io.Copy(io.MultiWriter(whole, prefix), &ctxReader{ctx: ctx, r: io.LimitReader(zr, l.OriginalSize)})
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if n != l.OriginalSize || digest.NewDigest(digest.SHA256, prefix) != l.OriginalDiffID {
		return fmt.Errorf("its first %d decompressed bytes are not the original tar (%s)", l.OriginalSize, l.OriginalDiffID)
	}
	rest, err := io.Copy(whole, &ctxReader{ctx: ctx, r: zr})
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if n+rest != l.UncompressedSize || digest.NewDigest(digest.SHA256, whole) != l.DiffID {
		return fmt.Errorf("it decompresses to %d bytes that do not hash to its diff_id %s", n+rest, l.DiffID)
	}
	return nil
}
