package convert

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/rillstream/rill/remote"
)

// readSize is the size of one range read of an original layer: large enough that round trips
// do not dominate, small enough that a few layers in parallel stay within tens of MiB.
const readSize = 4 << 20

// layerJob is one original layer to convert.
type layerJob struct {
	original ocispec.Descriptor
	diffID   digest.Digest // from M's config
	platform string
	index    int
	count    int
}

// convertLayers converts and pushes every job to the repository of ref, at most parallelism
// at a time, each staged in a temporary file (memory stays bounded whatever the layer size).
// Layers with the same original digest are converted once. It returns the result per
// original digest; on error, nothing but blobs (which no manifest names) has been pushed.
func (c *Converter) convertLayers(ctx context.Context, ref imageRef, jobs []layerJob) (map[digest.Digest]Layer, error) {
	var (
		mu  sync.Mutex
		out = map[digest.Digest]Layer{}
	)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.parallelism)
	seen := map[digest.Digest]bool{}
	for _, j := range jobs {
		if seen[j.original.Digest] {
			continue
		}
		seen[j.original.Digest] = true
		g.Go(func() error {
			l, err := c.convertLayer(ctx, ref, j)
			if err != nil {
				return fmt.Errorf("layer %d/%d (%s) of %s: %w", j.index+1, j.count, j.original.Digest, j.platform, err)
			}
			mu.Lock()
			out[j.original.Digest] = l
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// convertLayer converts one layer into a temporary file, checks the original against its
// digest and diff_id and the result with the eStargz reader, and pushes the result.
func (c *Converter) convertLayer(ctx context.Context, ref imageRef, j layerJob) (Layer, error) {
	report := func(p Phase, read int64, res *Layer) {
		c.opts.progress(Progress{Original: j.original.Digest, Index: j.index, Count: j.count, Platform: j.platform, Phase: p, Read: read, Size: j.original.Size, Result: res})
	}
	report(PhaseConverting, 0, nil)

	br, err := c.reg.BlobReader(ctx, ref.name, j.original)
	if err != nil {
		return Layer{}, err
	}
	defer br.Close()
	src := newSequentialReader(ctx, br)
	defer src.Close()
	h := &countingHasher{Hash: sha256.New(), report: func(n int64) { report(PhaseConverting, n, nil) }}
	tee := io.TeeReader(src, h)

	f, err := os.CreateTemp(c.opts.tempDir, "rill-layer-*.estargz")
	if err != nil {
		return Layer{}, fmt.Errorf("stage the converted layer: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	l, convErr := ConvertLayer(ctx, tee, bw, c.opts.layer)
	if convErr == nil {
		convErr = bw.Flush()
	}
	// Hash what the converter left unread (the gzip trailer, padding), so the original's
	// digest is checked whatever happened; a corrupt original explains a failed conversion.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		if ctx.Err() != nil {
			return Layer{}, ctx.Err()
		}
		return Layer{}, fmt.Errorf("read the original layer: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h.Hash); got != j.original.Digest || h.n != j.original.Size {
		return Layer{}, fmt.Errorf("the registry's blob hashes to %s (%d bytes), not to its digest %s (%d bytes): %w",
			got, h.n, j.original.Digest, j.original.Size, ErrCorruptLayer)
	}
	if convErr != nil {
		return Layer{}, convErr
	}
	if l.OriginalDiffID != j.diffID {
		return Layer{}, fmt.Errorf("its tar content hashes to %s, not to the diff_id %s the image config names: %w", l.OriginalDiffID, j.diffID, ErrCorruptLayer)
	}

	report(PhaseVerifying, j.original.Size, nil)
	check := checkConverted(ctx, io.NewSectionReader(f, 0, l.Size), l)
	if c.opts.verifyChunks && check == nil {
		check = VerifyLayer(ctx, io.NewSectionReader(f, 0, l.Size), Expected{OriginalDiffID: j.diffID, OriginalSize: l.OriginalSize, TOCDigest: l.TOCDigest})
	}
	if check != nil {
		return Layer{}, fmt.Errorf("the converted layer fails verification: %w", check)
	}

	report(PhasePushing, j.original.Size, nil)
	desc := ocispec.Descriptor{MediaType: mediaTypeLayerGzip, Digest: l.Digest, Size: l.Size}
	if err := c.reg.PushBlob(ctx, ref.name, desc, f); err != nil {
		return Layer{}, err
	}
	report(PhaseDone, j.original.Size, &l)
	return l, nil
}

// countingHasher hashes and counts, and reports the count every reportEvery bytes.
type countingHasher struct {
	hash.Hash
	n      int64
	last   int64
	report func(int64)
}

const reportEvery = 16 << 20

func (c *countingHasher) Write(p []byte) (int, error) {
	n, _ := c.Hash.Write(p)
	c.n += int64(n)
	if c.n-c.last >= reportEvery {
		c.last = c.n
		c.report(c.n)
	}
	return n, nil
}

// sequentialReader reads a ReaderAt front to back in readSize pieces, one piece ahead of its
// consumer, so that the network and the converter work at the same time.
type sequentialReader struct {
	pr     *io.PipeReader
	cancel context.CancelFunc
	done   chan struct{}
}

// contextReaderAt is a remote.BlobReader.
type contextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}

func newSequentialReader(ctx context.Context, src contextReaderAt) *sequentialReader {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	s := &sequentialReader{pr: pr, cancel: cancel, done: make(chan struct{})}
	pieces := make(chan []byte, 1)
	go func() { // fetcher: one piece in flight ahead of the writer
		defer close(pieces)
		for off := int64(0); off < src.Size(); {
			buf := make([]byte, min(readSize, src.Size()-off))
			n, err := src.ReadAtContext(ctx, buf, off)
			if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
				pw.CloseWithError(err)
				return
			}
			off += int64(n)
			select {
			case pieces <- buf:
			case <-ctx.Done():
				pw.CloseWithError(ctx.Err())
				return
			}
		}
	}()
	go func() { // writer
		defer close(s.done)
		for buf := range pieces {
			if _, err := pw.Write(buf); err != nil {
				cancel()
				for range pieces {
				}
				return
			}
		}
		pw.Close()
	}()
	return s
}

func (s *sequentialReader) Read(p []byte) (int, error) { return s.pr.Read(p) }

// Close stops the fetch and waits for its goroutines.
func (s *sequentialReader) Close() error {
	s.cancel()
	s.pr.CloseWithError(context.Canceled)
	<-s.done
	return nil
}

var _ contextReaderAt = (*remote.BlobReader)(nil)
