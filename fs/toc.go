package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
)

// Limits bound what a TOC may ask of the node. Zero values choose the defaults.
type Limits struct {
	// MaxTOCBytes bounds the TOC JSON, compressed and decompressed. Default 64 MiB.
	MaxTOCBytes int64
	// MaxEntries bounds the number of TOC entries (files and chunks). Default 4 Mi.
	MaxEntries int
}

const (
	defaultMaxTOCBytes = 64 << 20
	defaultMaxEntries  = 4 << 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxTOCBytes <= 0 {
		l.MaxTOCBytes = defaultMaxTOCBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = defaultMaxEntries
	}
	return l
}

// ErrInvalidTOC marks a layer whose TOC cannot be trusted or served; the layer is then pulled
// in full instead.
var ErrInvalidTOC = errors.New("invalid eStargz TOC")

// TOC is a layer's verified table of contents.
type TOC struct {
	// JTOC is the decoded TOC; its entries are not validated yet (NewIndex does that).
	JTOC *artifact.JTOC
	// Offset is where the TOC's gzip member starts in the blob: the end of the file data.
	Offset int64
	// BlobSize is the size of the whole blob.
	BlobSize int64
}

// LoadTOC reads the footer and TOC of an eStargz blob of size blobSize and checks the TOC
// against want, the digest recorded in the image (annotation
// containerd.io/snapshot/stargz/toc.digest).
func LoadTOC(ctx context.Context, blob io.ReaderAt, blobSize int64, want digest.Digest, limits Limits) (*TOC, error) {
	toc, _, err := LoadTOCJSON(ctx, blob, blobSize, want, limits)
	return toc, err
}

// LoadTOCJSON is LoadTOC that also returns the TOC JSON, to keep it on disk: ParseTOC reads it
// back without the network.
func LoadTOCJSON(ctx context.Context, blob io.ReaderAt, blobSize int64, want digest.Digest, limits Limits) (*TOC, []byte, error) {
	return LoadTOCJSONAt(ctx, blob, blobSize, 0, want, limits)
}

// LoadTOCJSONAt is LoadTOCJSON told where the TOC member starts (hint: the layer's
// artifact.AnnotationTOCOffset, 0 when unknown), so that one range read fetches the TOC
// member and the footer together instead of the footer first. The hint decides only which
// bytes are read: the TOC is where the footer says and must have digest want, whatever the
// hint says, and a hint past the footer's offset costs one more read (of the TOC where the
// footer says it is). A hint that would read more than the TOC limit is ignored.
func LoadTOCJSONAt(ctx context.Context, blob io.ReaderAt, blobSize, hint int64, want digest.Digest, limits Limits) (*TOC, []byte, error) {
	limits = limits.withDefaults()
	if err := want.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: TOC digest %q: %v", ErrInvalidTOC, want, err)
	}
	footerSize := int64(estargz.FooterSize)
	if blobSize < footerSize {
		return nil, nil, fmt.Errorf("%w: blob of %d bytes is smaller than an eStargz footer", ErrInvalidTOC, blobSize)
	}
	tocEnd := blobSize - footerSize
	// tail holds the blob's bytes from tailOffset to its end: the footer, and the TOC member
	// too when the hint is right.
	tailOffset := tocEnd
	if hint > 0 && hint < tocEnd && tocEnd-hint <= limits.MaxTOCBytes {
		tailOffset = hint
	}
	tail := make([]byte, blobSize-tailOffset)
	if _, err := readFull(ctx, blob, tail, tailOffset); err != nil {
		if tailOffset < tocEnd {
			return nil, nil, fmt.Errorf("read TOC and footer: %w", err)
		}
		return nil, nil, fmt.Errorf("read footer: %w", err)
	}
	tocOffset, err := artifact.ParseFooter(tail[len(tail)-int(footerSize):])
	if err != nil {
		return nil, nil, fmt.Errorf("%w: footer: %v", ErrInvalidTOC, err)
	}
	if tocOffset < 0 || tocOffset >= tocEnd {
		return nil, nil, fmt.Errorf("%w: TOC offset %d outside the blob (%d bytes)", ErrInvalidTOC, tocOffset, blobSize)
	}
	if tocEnd-tocOffset > limits.MaxTOCBytes {
		return nil, nil, fmt.Errorf("%w: TOC of %d bytes is larger than the limit of %d", ErrInvalidTOC, tocEnd-tocOffset, limits.MaxTOCBytes)
	}
	var compressed []byte
	if tocOffset >= tailOffset {
		compressed = tail[tocOffset-tailOffset : tocEnd-tailOffset]
	} else {
		compressed = make([]byte, tocEnd-tocOffset)
		if _, err := readFull(ctx, blob, compressed, tocOffset); err != nil {
			return nil, nil, fmt.Errorf("read TOC: %w", err)
		}
	}
	tocJSON, err := decompressTOC(compressed, limits.MaxTOCBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidTOC, err)
	}
	toc, err := ParseTOC(tocJSON, tocOffset, blobSize, want, limits)
	if err != nil {
		return nil, nil, err
	}
	return toc, tocJSON, nil
}

// ParseTOC checks TOC JSON against its digest and decodes it; tocOffset and blobSize are the
// TOC member's offset and the blob's size, as LoadTOCJSON found them.
func ParseTOC(tocJSON []byte, tocOffset, blobSize int64, want digest.Digest, limits Limits) (*TOC, error) {
	limits = limits.withDefaults()
	if int64(len(tocJSON)) > limits.MaxTOCBytes {
		return nil, fmt.Errorf("%w: TOC JSON of %d bytes is larger than the limit of %d", ErrInvalidTOC, len(tocJSON), limits.MaxTOCBytes)
	}
	if got := digest.FromBytes(tocJSON); got != want {
		return nil, fmt.Errorf("%w: TOC digest is %s, the image records %s", ErrInvalidTOC, got, want)
	}
	if tocOffset <= 0 || tocOffset >= blobSize {
		return nil, fmt.Errorf("%w: TOC offset %d outside the blob (%d bytes)", ErrInvalidTOC, tocOffset, blobSize)
	}
	jtoc, err := artifact.DecodeTOC(tocJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidTOC, err)
	}
	if len(jtoc.Entries) > limits.MaxEntries {
		return nil, fmt.Errorf("%w: %d TOC entries, more than the limit of %d", ErrInvalidTOC, len(jtoc.Entries), limits.MaxEntries)
	}
	return &TOC{JTOC: jtoc, Offset: tocOffset, BlobSize: blobSize}, nil
}

// decompressTOC extracts the TOC JSON from its gzip member: a tar holding one file named
// stargz.index.json. klauspost's gzip decompresses it in half the time of the standard
// library's (megabytes of JSON before a layer mounts).
func decompressTOC(compressed []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("TOC gzip: %v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(io.LimitReader(zr, limit+4096))
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("TOC tar: %v", err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, fmt.Errorf("TOC tar holds %q, not %s", h.Name, estargz.TOCTarName)
	}
	if h.Size > limit {
		return nil, fmt.Errorf("TOC JSON of %d bytes is larger than the limit of %d", h.Size, limit)
	}
	data := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, data); err != nil {
		return nil, fmt.Errorf("TOC tar: %v", err)
	}
	return data, nil
}

// ContextReaderAt is a blob reader that honours a context (remote's blob reader does). Other
// io.ReaderAt implementations are bounded by running the read aside and abandoning it when the
// context ends.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// readFull reads len(p) bytes at off, or fails; it returns when ctx ends even if the reader
// does not. p must not be reused after an error: an abandoned read may still write into it.
func readFull(ctx context.Context, r io.ReaderAt, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int
	var err error
	if cr, ok := r.(ContextReaderAt); ok {
		n, err = cr.ReadAtContext(ctx, p, off)
	} else {
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		go func() {
			n, err := r.ReadAt(p, off)
			done <- result{n, err}
		}()
		select {
		case res := <-done:
			n, err = res.n, res.err
		case <-ctx.Done():
			return 0, fmt.Errorf("read %d bytes at %d: %w", len(p), off, ctx.Err())
		}
	}
	if n == len(p) {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
