package convert

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
)

// LayerOptions tunes the conversion. Zero values choose the defaults.
type LayerOptions struct {
	// ChunkSize is the largest piece of a regular file in one gzip member; smaller chunks
	// waste fewer bytes when a large file is read in places, at the cost of a larger TOC.
	// Default DefaultChunkSize.
	ChunkSize int
	// CompressionLevel is a compress/gzip level from gzip.HuffmanOnly (-2) to
	// gzip.BestCompression (9); 0 means gzip.DefaultCompression.
	CompressionLevel int
}

// DefaultChunkSize is the chunk size used when LayerOptions.ChunkSize is 0: 256 KiB. A cold
// read at random in a large file fetches its chunk, so the chunk size is its cost: on a
// 100 Mbit/s, 20 ms link a 4 KiB read took 2.7 round trips with 256 KiB chunks, 6 with 1 MiB
// ones (test/perf, BenchmarkColdRandomRead4K), while sequential reads, which fetch many chunks
// per request, reach 0.8-0.9 of the link with either. Smaller chunks read at random faster
// still (1.6 round trips at 64 KiB) but cost 4× the TOC and the index: about 220 bytes of TOC
// JSON and 270 bytes of the node's memory per chunk, 7 MiB and 8.5 MiB for a 2 GiB file at
// 64 KiB, 1.8 MiB and 2.3 MiB at 256 KiB — and the TOC is fetched before the layer mounts.
const DefaultChunkSize = 256 << 10

func (o LayerOptions) withDefaults() (LayerOptions, error) {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.ChunkSize < 4096 {
		return o, fmt.Errorf("chunk size %d is below the minimum of 4096 bytes", o.ChunkSize)
	}
	if o.ChunkSize > artifact.MaxChunkSize {
		return o, fmt.Errorf("chunk size %d is above the maximum of %d bytes (nodes do not stream layers with larger chunks)", o.ChunkSize, artifact.MaxChunkSize)
	}
	if o.CompressionLevel == 0 {
		o.CompressionLevel = gzip.DefaultCompression
	}
	if o.CompressionLevel < gzip.HuffmanOnly || o.CompressionLevel > gzip.BestCompression {
		return o, fmt.Errorf("compression level %d is not a gzip level (-2..9)", o.CompressionLevel)
	}
	return o, nil
}

// Layer describes a converted layer.
type Layer struct {
	// Digest and Size of the eStargz blob written to dst.
	Digest digest.Digest
	Size   int64
	// DiffID is the sha256 of the whole decompressed eStargz layer (original bytes + TOC).
	DiffID digest.Digest
	// UncompressedSize is the length of the whole decompressed eStargz layer.
	UncompressedSize int64
	// TOCDigest is the digest of the TOC JSON.
	TOCDigest digest.Digest
	// TOCOffset is where the TOC's gzip member starts in the blob (the footer records it).
	TOCOffset int64
	// OriginalDiffID and OriginalSize describe the original tar: the first OriginalSize bytes
	// of the decompressed layer hash to OriginalDiffID.
	OriginalDiffID digest.Digest
	OriginalSize   int64
}

// Annotations returns the annotations of the layer's descriptor in a streaming artifact;
// originalDigest is the digest of the layer it was converted from.
func (l Layer) Annotations(originalDigest digest.Digest) map[string]string {
	a := map[string]string{
		artifact.AnnotationTOCDigest:        l.TOCDigest.String(),
		artifact.AnnotationUncompressedSize: fmt.Sprint(l.UncompressedSize),
		artifact.AnnotationOriginalDigest:   originalDigest.String(),
		artifact.AnnotationOriginalDiffID:   l.OriginalDiffID.String(),
		artifact.AnnotationOriginalSize:     fmt.Sprint(l.OriginalSize),
	}
	if l.TOCOffset > 0 {
		a[artifact.AnnotationTOCOffset] = fmt.Sprint(l.TOCOffset)
	}
	return a
}

// ConvertLayer reads a layer (gzip-compressed or plain tar) from src and writes its
// byte-preserving eStargz form to dst. Memory use is bounded by the chunk size and the TOC,
// whatever the layer size. Bytes after the tar's end-of-archive marker are kept when they are
// zero padding (as tar writes to fill a record); other data there is refused unless the
// estargz writer kept it, since it could not be preserved.
//
// ConvertLayer does not read dst back; VerifyLayer checks the result.
func ConvertLayer(ctx context.Context, src io.Reader, dst io.Writer, opts LayerOptions) (Layer, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Layer{}, err
	}
	out := &hashingWriter{w: dst, h: sha256.New()}
	l, err := convertLayer(ctx, src, out, opts)
	if err != nil && ctx.Err() == nil && out.err == nil && !errors.Is(err, ErrUnsupportedMediaType) && !errors.Is(err, ErrUnstreamableLayer) {
		// The layer's own bytes are at fault (a truncated or corrupt gzip stream, a broken tar):
		// not the converter's output, and not a cancellation.
		return Layer{}, fmt.Errorf("%w: %w", err, ErrCorruptLayer)
	}
	return l, err
}

func convertLayer(ctx context.Context, src io.Reader, out *hashingWriter, opts LayerOptions) (Layer, error) {
	tarStream, closeTar, err := decompressed(ctx, src)
	if err != nil {
		return Layer{}, err
	}
	defer closeTar()

	// The original's diff_id is the hash of every byte of its tar stream, as read; its tar
	// headers give the TOC entries rill's extension fields.
	headers := scanHeaders()
	defer headers.stop()
	orig := &hashingReader{r: io.TeeReader(tarStream, headers.pw), h: sha256.New()}

	counter := &countingCompressor{GzipCompressor: estargz.NewGzipCompressorWithLevel(opts.CompressionLevel), level: opts.CompressionLevel}
	w := estargz.NewWriterWithCompressor(out, counter)
	w.ChunkSize = opts.ChunkSize

	if _, err := tarStream.(peeker).Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			return Layer{}, errors.New("convert layer: the layer is empty, not even a tar end-of-archive marker")
		}
		return Layer{}, fmt.Errorf("read layer: %w", err)
	}
	if err := w.AppendTarLossLess(orig); err != nil {
		return Layer{}, fmt.Errorf("convert layer: %w", err)
	}
	// The estargz writer stops at the end-of-archive marker and may have read ahead of what
	// it wrote. What the original holds after that point is zero padding: write the same
	// number of zero bytes, so the original stays an exact prefix.
	if _, err := io.Copy(io.Discard, orig); err != nil {
		return Layer{}, fmt.Errorf("read layer: %w", err)
	}
	if orig.nonZeroAfter(counter.written) {
		return Layer{}, errors.New("convert layer: the tar stream has data after its end-of-archive marker; it cannot be converted without losing bytes")
	}
	for missing := orig.n - counter.written; missing > 0; missing = orig.n - counter.written {
		before := counter.written
		if err := w.AppendTarLossLess(bytes.NewReader(make([]byte, missing))); err != nil {
			return Layer{}, fmt.Errorf("convert layer: keep trailing padding: %w", err)
		}
		if counter.written == before {
			return Layer{}, fmt.Errorf("convert layer: %d bytes of trailing padding could not be kept", missing)
		}
	}
	if counter.written != orig.n {
		return Layer{}, fmt.Errorf("convert layer: wrote %d tar bytes for %d original bytes", counter.written, orig.n)
	}
	if counter.headers, err = headers.wait(); err != nil {
		return Layer{}, fmt.Errorf("read layer: %w", err)
	}

	tocDigest, err := w.Close()
	if err != nil {
		if errors.Is(err, ErrUnstreamableLayer) {
			return Layer{}, err
		}
		return Layer{}, fmt.Errorf("convert layer: write TOC: %w", err)
	}
	// What a node accepts, checked on the TOC as a node decodes it.
	toc, err := artifact.DecodeTOC(counter.tocJSON)
	if err != nil {
		return Layer{}, fmt.Errorf("convert layer: %w", err)
	}
	if _, err := artifact.NewTree(toc, counter.tocOffset); err != nil {
		return Layer{}, fmt.Errorf("%w: %v", ErrUnstreamableLayer, err)
	}
	diffID, err := digest.Parse(w.DiffID())
	if err != nil {
		return Layer{}, fmt.Errorf("convert layer: %w", err)
	}
	return Layer{
		Digest:           digest.NewDigest(digest.SHA256, out.h),
		Size:             out.n,
		DiffID:           diffID,
		UncompressedSize: counter.written + counter.tocBytes,
		TOCDigest:        tocDigest,
		TOCOffset:        counter.tocOffset,
		OriginalDiffID:   digest.NewDigest(digest.SHA256, orig.h),
		OriginalSize:     orig.n,
	}, nil
}

type peeker interface {
	io.Reader
	Peek(int) ([]byte, error)
}

// decompressed returns the tar stream of a gzip or plain layer, cancelled with ctx.
func decompressed(ctx context.Context, src io.Reader) (peeker, func(), error) {
	br := bufio.NewReaderSize(&ctxReader{ctx: ctx, r: src}, 64<<10)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("read layer: %w", err)
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("read layer: gzip: %w", err)
		}
		return bufio.NewReader(zr), func() { zr.Close() }, nil
	}
	if len(magic) >= 2 && magic[0] == 0x28 && magic[1] == 0xb5 {
		return nil, nil, fmt.Errorf("read layer: zstd layers are not supported yet: %w", ErrUnsupportedMediaType)
	}
	return br, func() {}, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashingReader hashes and counts what is read, and remembers the offset of the last
// non-zero byte, to tell padding from data after the end-of-archive marker.
type hashingReader struct {
	r           io.Reader
	h           hash.Hash
	n           int64
	lastNonZero int64 // offset+1 of the last non-zero byte read; 0 if none
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.h.Write(p[:n])
		if i := bytes.LastIndexFunc(p[:n], func(c rune) bool { return c != 0 }); i >= 0 {
			r.lastNonZero = r.n + int64(i) + 1
		}
		r.n += int64(n)
	}
	return n, err
}

// nonZeroAfter reports whether a byte at or after off is not zero.
func (r *hashingReader) nonZeroAfter(off int64) bool { return r.lastNonZero > off }

type hashingWriter struct {
	w   io.Writer
	h   hash.Hash
	n   int64
	err error // the first write error
}

func (w *hashingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// countingCompressor is estargz's gzip compressor that counts the uncompressed tar bytes it
// is given, and the uncompressed bytes of the TOC entry it appends. It writes the TOC with
// rill's extension fields, from the tar headers it is given before the writer closes.
type countingCompressor struct {
	*estargz.GzipCompressor
	level    int
	written  int64
	tocBytes int64

	headers   []*tar.Header
	tocJSON   []byte
	tocOffset int64
}

func (c *countingCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	inner, err := c.GzipCompressor.Writer(w)
	if err != nil {
		return nil, err
	}
	return &countingWriteFlushCloser{WriteFlushCloser: inner, n: &c.written}, nil
}

func (c *countingCompressor) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	ext, err := artifact.Extend(toc, c.headers)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnstreamableLayer, err)
	}
	counted := &countingHash{Hash: diffHash}
	tocJSON, err := artifact.WriteTOCAndFooter(w, off, ext, c.level, counted)
	if err != nil {
		return "", err
	}
	c.tocBytes, c.tocJSON, c.tocOffset = counted.n, tocJSON, off
	return digest.FromBytes(tocJSON), nil
}

// headerScanner reads the tar headers of a stream written to pw, as the estargz writer
// reads the same stream.
type headerScanner struct {
	pw      *io.PipeWriter
	done    chan struct{}
	headers []*tar.Header
	err     error
}

func scanHeaders() *headerScanner {
	pr, pw := io.Pipe()
	s := &headerScanner{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tr := tar.NewReader(pr)
		for {
			h, err := tr.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					s.err = err
				}
				break
			}
			s.headers = append(s.headers, h)
		}
		io.Copy(io.Discard, pr) // padding after the end-of-archive marker
		pr.Close()
	}()
	return s
}

// wait ends the stream and returns its headers.
func (s *headerScanner) wait() ([]*tar.Header, error) {
	s.pw.Close()
	<-s.done
	return s.headers, s.err
}

// stop ends the scan early (or again).
func (s *headerScanner) stop() {
	s.pw.CloseWithError(errors.New("conversion ended"))
	<-s.done
}

type countingWriteFlushCloser struct {
	estargz.WriteFlushCloser
	n *int64
}

func (c *countingWriteFlushCloser) Write(p []byte) (int, error) {
	n, err := c.WriteFlushCloser.Write(p)
	*c.n += int64(n)
	return n, err
}

type countingHash struct {
	hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.Hash.Write(p)
}
