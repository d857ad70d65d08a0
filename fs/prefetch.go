package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/remote"
	"github.com/sirupsen/logrus"
)

// Prefetch tuning: the profile is taken in windows of files (first-access order between
// windows), each window's chunks sorted by blob offset and coalesced into ranges — neighbours
// in the blob are usually used together — and several ranges are in flight at once. A window
// ends with a wait for its last range, so windows are large enough to make that rare. Ranges
// are joined across gaps of at most prefetchMaxGap only: the bytes of a gap are fetched and
// thrown away, and a profile scattered through a layer (every 50th small file) had its ranges
// joined across 256 KiB gaps into nearly the whole layer.
const (
	prefetchWindowFiles = 256
	prefetchMaxRange    = 4 << 20
	prefetchMaxGap      = 32 << 10
	prefetchParallel    = 4
	prefetchTimeout     = 2 * time.Minute
)

// prefetcher fetches files of a layer into its cache in the background, beside reads.
type prefetcher struct {
	lfs  *layerFS
	idx  *Index
	done chan struct{}
	// fetched is the compressed bytes fetched by prefetch.
	fetched atomic.Int64
}

// Prefetch starts fetching the named files (paths in the layer, in first-access order) into
// the layer's cache and returns at once: the container starts while the files arrive. Reads
// go first at the registry (remote's scheduler: reads have slots of their own). Paths the layer does not have are
// skipped. Without a cache there is nowhere to put the files, and Prefetch does nothing.
// Unmount stops it.
func (m *Mounted) Prefetch(paths []string) {
	if m.lfs.cache == nil || len(paths) == 0 {
		return
	}
	p := &prefetcher{lfs: m.lfs, idx: m.idx, done: make(chan struct{})}
	m.prefetch = p
	go func() {
		defer close(p.done)
		began := time.Now()
		files, chunks, err := p.run(m.ctx, paths)
		entry := m.lfs.log.WithFields(logrus.Fields{"files": files, "chunks": chunks, "bytes": p.fetched.Load(), "duration": time.Since(began)})
		if err != nil {
			entry.WithError(err).Warn("prefetch stopped")
			return
		}
		entry.Info("prefetch done")
	}()
}

// PrefetchDone is closed when the prefetch started by Prefetch has ended (nil without one).
func (m *Mounted) PrefetchDone() <-chan struct{} {
	if m.prefetch == nil {
		return nil
	}
	return m.prefetch.done
}

// prefetchChunk is a chunk of a file to prefetch.
type prefetchChunk struct {
	node  *Node
	chunk Chunk
}

func (p *prefetcher) run(ctx context.Context, paths []string) (files, chunks int, err error) {
	seen := map[*Node]bool{}
	var window []*Node
	flush := func() error {
		if len(window) == 0 {
			return nil
		}
		n, err := p.fetchWindow(ctx, window)
		chunks += n
		window = window[:0]
		return err
	}
	for _, path := range paths {
		n := p.idx.Lookup(path)
		if n == nil || n.Kind != KindReg || len(n.Chunks) == 0 || seen[n] {
			continue
		}
		seen[n] = true
		files++
		window = append(window, n)
		if len(window) == prefetchWindowFiles {
			if err := flush(); err != nil {
				return files, chunks, err
			}
		}
	}
	return files, chunks, flush()
}

// fetchWindow fetches the missing chunks of files, coalesced into ranges, several at a time.
func (p *prefetcher) fetchWindow(ctx context.Context, files []*Node) (int, error) {
	var missing []prefetchChunk
	handles := map[*Node]*cache.File{}
	defer func() {
		for _, cf := range handles {
			cf.Close()
		}
	}()
	for _, n := range files {
		key, _ := cacheKey(n)
		cf, err := p.lfs.cache.File(key, n.Size)
		if err != nil {
			return 0, fmt.Errorf("open cached file: %w", err)
		}
		handles[n] = cf
		for _, c := range n.Chunks {
			if len(cf.Missing(c.Offset, c.Size)) > 0 {
				missing = append(missing, prefetchChunk{node: n, chunk: c})
			}
		}
	}
	slices.SortFunc(missing, func(a, b prefetchChunk) int { return int(a.chunk.BlobOffset - b.chunk.BlobOffset) })
	ranges := coalesce(missing)

	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, prefetchParallel)
		mu       sync.Mutex
		firstErr error
	)
	for _, r := range ranges {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return len(missing), ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := p.fetchRange(ctx, r, handles); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return len(missing), firstErr
}

// coalesce groups chunks sorted by blob offset into ranges of neighbours.
func coalesce(chunks []prefetchChunk) [][]prefetchChunk {
	var ranges [][]prefetchChunk
	for _, c := range chunks {
		if n := len(ranges); n > 0 {
			r := ranges[n-1]
			start, end := r[0].chunk.BlobOffset, r[len(r)-1].chunk.BlobEnd
			if c.chunk.BlobOffset >= end && c.chunk.BlobOffset-end <= prefetchMaxGap && c.chunk.BlobEnd-start <= prefetchMaxRange {
				ranges[n-1] = append(r, c)
				continue
			}
		}
		ranges = append(ranges, []prefetchChunk{c})
	}
	return ranges
}

// fetchRange fetches one coalesced range, verifies each chunk in it and stores it. A chunk
// that fails verification is counted and left to on-demand reads (which fetch it again).
func (p *prefetcher) fetchRange(ctx context.Context, r []prefetchChunk, handles map[*Node]*cache.File) error {
	// No yielding to reads here (the background fetch yields): prefetch fetches what the
	// container is about to read, and reads have request slots of their own at every host.
	ctx, cancel := context.WithTimeout(remote.WithPriority(ctx, remote.PriorityPrefetch), prefetchTimeout)
	defer cancel()
	start, end := r[0].chunk.BlobOffset, r[len(r)-1].chunk.BlobEnd
	buf := make([]byte, end-start)
	if _, err := readFull(ctx, p.lfs.reader.blob, buf, start); err != nil {
		return fmt.Errorf("prefetch blob range [%d, %d): %w", start, end, err)
	}
	p.fetched.Add(int64(len(buf)))
	p.lfs.metrics.fetchedPrefetch.Add(float64(len(buf)))
	for _, pc := range r {
		c := pc.chunk
		data, extra, err := decompressSegment(buf[c.BlobOffset-start:c.BlobEnd-start], c)
		if err != nil {
			p.lfs.metrics.verificationFailures.Inc()
			p.lfs.log.WithError(err).Debug("prefetched chunk failed verification; left to reads")
			continue
		}
		p.lfs.reader.store(handles[pc.node], c, data)
		p.lfs.reader.storeExtra(c.BlobOffset, extra)
	}
	return nil
}

// maxSegmentExtra bounds the decompressed bytes that follow a chunk in its blob segment (tar
// padding and the headers of the entries up to the next chunk): what a record can keep
// (longer runs are not kept anyway), and a bound against gzip bombs: a few KiB of gzip can
// decompress to GiBs, and reads, prefetch and the background fetch decompress segments from
// goroutines at once.
const maxSegmentExtra = recordSize - 8

// decompressSegment decompresses a chunk's blob segment — the gzip members from the chunk's
// offset to the next chunk's — and returns the chunk's bytes, verified against its digest, and
// the tar bytes that follow them in the segment (extra; verified only with the whole layer).
func decompressSegment(compressed []byte, c Chunk) (data, extra []byte, err error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: blob offset %d: gzip: %v", ErrChunkVerification, c.BlobOffset, err)
	}
	data = make([]byte, c.Size)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, nil, fmt.Errorf("%w: blob offset %d: %v", ErrChunkVerification, c.BlobOffset, err)
	}
	if got := digest.FromBytes(data); got != c.Digest {
		return nil, nil, fmt.Errorf("%w: blob offset %d: digest %s, TOC says %s", ErrChunkVerification, c.BlobOffset, got, c.Digest)
	}
	extra, err = io.ReadAll(io.LimitReader(zr, maxSegmentExtra+1))
	if err != nil || len(extra) > maxSegmentExtra {
		// The chunk is good; only the bookkeeping for whole-layer verification is lost.
		return data, nil, nil
	}
	return data, extra, nil
}
