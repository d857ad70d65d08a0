package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

// ErrChunkVerification marks a chunk whose bytes did not match its digest in the TOC, twice.
var ErrChunkVerification = errors.New("chunk failed verification")

// chunkReader reads chunks of a layer blob and returns only verified bytes.
type chunkReader struct {
	blob    io.ReaderAt
	metrics *Metrics
}

// read returns the uncompressed bytes of c, verified against c.Digest. A chunk that fails
// verification is read once more (a transfer may have been corrupted on the way); a second
// failure is an error wrapping ErrChunkVerification.
func (r *chunkReader) read(ctx context.Context, c Chunk) ([]byte, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		data, err := r.readOnce(ctx, c)
		if err == nil {
			return data, nil
		}
		if !errors.Is(err, ErrChunkVerification) {
			return nil, err
		}
		r.metrics.verificationFailures.Inc()
		lastErr = err
	}
	return nil, lastErr
}

func (r *chunkReader) readOnce(ctx context.Context, c Chunk) ([]byte, error) {
	compressed := make([]byte, c.BlobEnd-c.BlobOffset)
	if _, err := readFull(ctx, r.blob, compressed, c.BlobOffset); err != nil {
		return nil, fmt.Errorf("fetch chunk at blob offset %d: %w", c.BlobOffset, err)
	}
	r.metrics.fetchedBytes.Add(float64(len(compressed)))
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("%w: blob offset %d: gzip: %v", ErrChunkVerification, c.BlobOffset, err)
	}
	zr.Multistream(false)
	data := make([]byte, c.Size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("%w: blob offset %d: %v", ErrChunkVerification, c.BlobOffset, err)
	}
	if got := digest.FromBytes(data); got != c.Digest {
		return nil, fmt.Errorf("%w: blob offset %d: digest %s, TOC says %s", ErrChunkVerification, c.BlobOffset, got, c.Digest)
	}
	return data, nil
}

// readFile reads len(p) bytes of file n at off (fewer at the end of the file) through its
// chunks.
func (r *chunkReader) readFile(ctx context.Context, n *Node, p []byte, off int64) (int, error) {
	if off >= n.Size || len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), n.Size)
	total := 0
	// The first chunk that holds off.
	i := searchChunk(n.Chunks, off)
	for ; i < len(n.Chunks) && n.Chunks[i].Offset < end; i++ {
		c := n.Chunks[i]
		data, err := r.read(ctx, c)
		if err != nil {
			return total, err
		}
		from := max(off, c.Offset) - c.Offset
		to := min(end, c.Offset+c.Size) - c.Offset
		total += copy(p[c.Offset+from-off:], data[from:to])
	}
	return total, nil
}

// searchChunk returns the index of the chunk holding file offset off.
func searchChunk(chunks []Chunk, off int64) int {
	lo, hi := 0, len(chunks)
	for lo < hi {
		m := (lo + hi) / 2
		if chunks[m].Offset+chunks[m].Size <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
