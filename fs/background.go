package fs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/remote"
	"golang.org/x/time/rate"
)

// Errors of Complete.
var (
	// ErrLayerMismatch: the layer, complete, does not decompress to the original's bytes.
	ErrLayerMismatch = errors.New("layer does not match the original")
	// ErrIncomplete: the layer could not be made complete in the cache (no cache, or the
	// cache is full), so it could not be verified.
	ErrIncomplete = errors.New("layer not complete")
)

// Original is what a converted layer must decompress to: the original's tar bytes.
type Original struct {
	DiffID digest.Digest
	Size   int64
}

// segment is a piece of the blob's data, from one recorded gzip member offset to the next:
// a chunk's member with the tar bytes that follow it, or (chunk == nil) the headers before
// the first chunk.
type segment struct {
	start, end int64
	node       *Node
	chunk      *Chunk
}

const headSegmentKey = "x0"

func extraKey(blobOffset int64) string { return "x" + strconv.FormatInt(blobOffset, 10) }

// isRecordKey tells the cache keys of records (extraKey, headSegmentKey) from those of files
// (cacheKey: decimal blob offsets).
func isRecordKey(key string) bool { return strings.HasPrefix(key, "x") }

// recordSize is the size of the cache entry holding the tar bytes that follow a chunk in its
// segment: sparse, so only what is written takes space. Longer runs of tar headers between two
// chunks than fit are not kept: such a layer is completed but cannot be verified.
const recordSize = 1 << 20

// storeExtra keeps the tar bytes that follow a chunk in its segment, for the verification of
// the whole layer: an 8-byte length, then the bytes.
func (r *chunkReader) storeExtra(blobOffset int64, extra []byte) {
	if r.cache == nil || extra == nil {
		return
	}
	r.putRecord(extraKey(blobOffset), extra)
}

func (r *chunkReader) putRecord(key string, b []byte) {
	if len(b)+8 > recordSize {
		return
	}
	f, err := r.cache.File(key, recordSize)
	if err != nil {
		return
	}
	defer f.Close()
	if len(f.Missing(0, 8)) == 0 {
		return // kept already
	}
	rec := make([]byte, 8+len(b))
	binary.LittleEndian.PutUint64(rec, uint64(len(b)))
	copy(rec[8:], b)
	if err := f.WriteAt(rec, 0); err != nil && !errors.Is(err, cache.ErrClosed) && !errors.Is(err, cache.ErrRemoved) {
		r.metrics.cacheWriteErrors.Inc()
	}
}

// getRecord returns a record stored by putRecord, or false.
func (r *chunkReader) getRecord(key string) ([]byte, bool) {
	f, err := r.cache.File(key, recordSize)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	if len(f.Missing(0, 8)) > 0 {
		return nil, false
	}
	var hdr [8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return nil, false
	}
	n := binary.LittleEndian.Uint64(hdr[:])
	if n > recordSize-8 || len(f.Missing(8, int64(n))) > 0 {
		return nil, false
	}
	b := make([]byte, n)
	if n == 0 {
		return b, true
	}
	if _, err := f.ReadAt(b, 8); err != nil && !errors.Is(err, io.EOF) {
		return nil, false
	}
	return b, true
}

// segments lists the blob's data segments in blob order.
func (idx *Index) segments() []segment {
	var segs []segment
	seen := map[*Node]bool{}
	var walk func(n *Node)
	walk = func(n *Node) {
		for _, name := range n.Names {
			c := n.Child(name)
			switch {
			case c.Kind == KindDir:
				walk(c)
			case c.Kind == KindReg && !seen[c]:
				seen[c] = true
				for i := range c.Chunks {
					segs = append(segs, segment{start: c.Chunks[i].BlobOffset, end: c.Chunks[i].BlobEnd, node: c, chunk: &c.Chunks[i]})
				}
			}
		}
	}
	walk(idx.Root)
	for _, c := range idx.Replaced {
		for i := range c.Chunks {
			segs = append(segs, segment{start: c.Chunks[i].BlobOffset, end: c.Chunks[i].BlobEnd, node: c, chunk: &c.Chunks[i]})
		}
	}
	slices.SortFunc(segs, func(a, b segment) int { return int(a.start - b.start) })
	head := idx.DataEnd
	if len(segs) > 0 {
		head = segs[0].start
	}
	return append([]segment{{start: 0, end: head}}, segs...)
}

// Complete makes the whole layer local in the background order — after the prefetch, yielding
// to reads, skipping what is local already — and, when original is given, verifies that the
// layer decompresses to exactly the original's tar bytes. It returns ErrLayerMismatch when they
// differ (an alarm: the artifact does not convert the image), ErrIncomplete when the cache could
// not hold the layer, or the context's error at Unmount. Nothing of the layer is evicted
// meanwhile: Mount pinned its cache handle.
func (m *Mounted) Complete(original *Original) error {
	if m.lfs.cache == nil {
		return fmt.Errorf("%w: no cache", ErrIncomplete)
	}
	ctx := m.ctx
	if done := m.PrefetchDone(); done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	began := time.Now()
	segs := m.idx.segments()
	fetched, err := m.fetchMissing(ctx, segs)
	if err != nil {
		return err
	}
	entry := m.lfs.log.WithField("fetched", fetched).WithField("duration", time.Since(began))
	if original == nil {
		entry.Info("layer complete")
		return nil
	}
	if err := m.verifyLayer(ctx, segs, *original); err != nil {
		return err
	}
	entry.Info("layer complete and verified against the original")
	return nil
}

// backgroundRange bounds one background request. Moderate, because a read that starts while
// it is in flight ends it (chunkReader.preemptible) and what it had received is fetched again:
// 1 MiB is at most 0.4 s of a 20 Mbit/s link lost per preemption, and still long enough
// (84 ms at 100 Mbit/s) that the round trip before each request costs little of the link.
// One request in flight per layer, and few per host (the registry's bulk slots): a read
// shares the link with few transfers in the moment before they end.
const backgroundRange = 1 << 20

// fetchMissing fetches every segment not local yet, in blob order, in ranges of neighbours.
func (m *Mounted) fetchMissing(ctx context.Context, segs []segment) (int64, error) {
	var fetched int64
	var batch []segment
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := m.fetchSegments(ctx, batch)
		fetched += n
		batch = batch[:0]
		return err
	}
	for _, s := range segs {
		if err := ctx.Err(); err != nil {
			return fetched, err
		}
		if m.segmentLocal(s) {
			if err := flush(); err != nil {
				return fetched, err
			}
			continue
		}
		if len(batch) > 0 && (batch[len(batch)-1].end != s.start || s.end-batch[0].start > backgroundRange) {
			if err := flush(); err != nil {
				return fetched, err
			}
		}
		batch = append(batch, s)
	}
	return fetched, flush()
}

// segmentLocal reports whether a segment's bytes are all in the cache.
func (m *Mounted) segmentLocal(s segment) bool {
	r := m.lfs.reader
	if s.chunk == nil {
		_, ok := r.getRecord(headSegmentKey)
		return ok || s.end == 0
	}
	if _, ok := r.getRecord(extraKey(s.start)); !ok {
		return false
	}
	key, _ := cacheKey(s.node)
	f, err := r.cache.File(key, s.node.Size)
	if err != nil {
		return false
	}
	defer f.Close()
	return len(f.Missing(s.chunk.Offset, s.chunk.Size)) == 0
}

// fetchSegments fetches neighbouring segments in one request and stores them.
func (m *Mounted) fetchSegments(ctx context.Context, segs []segment) (int64, error) {
	r := m.lfs.reader
	start, end := segs[0].start, segs[len(segs)-1].end
	if end <= start {
		return 0, nil
	}
	if err := waitRate(ctx, m.lfs.backgroundRate, end-start); err != nil {
		return 0, err
	}
	buf := make([]byte, end-start)
	for {
		r.yield(ctx)
		err := m.fetchPreemptible(ctx, buf, start)
		if err == nil {
			break
		}
		if errors.Is(err, errPreempted) && ctx.Err() == nil {
			m.lfs.metrics.backgroundPreemptions.Inc()
			continue
		}
		return 0, fmt.Errorf("background fetch of blob range [%d, %d): %w", start, end, err)
	}
	m.lfs.metrics.fetchedBackground.Add(float64(len(buf)))
	for _, s := range segs {
		part := buf[s.start-start : s.end-start]
		if s.chunk == nil {
			head, err := decompressAll(part)
			if err != nil {
				// Corrupted on the way, or in the blob: fetched once more, as chunks are,
				// before it is taken for the blob's (an alarm).
				m.lfs.metrics.verificationFailures.Inc()
				again := make([]byte, len(part))
				if ferr := m.fetchPreemptible(ctx, again, s.start); ferr != nil {
					return int64(len(buf)), fmt.Errorf("background fetch of the blob's first headers: %w", ferr)
				}
				if head, err = decompressAll(again); err != nil {
					return int64(len(buf)), fmt.Errorf("%w: the blob's first headers: %w", ErrLayerMismatch, err)
				}
			}
			if head != nil {
				r.putRecord(headSegmentKey, head)
			}
			continue
		}
		data, extra, err := decompressSegment(part, *s.chunk)
		if err != nil {
			m.lfs.metrics.verificationFailures.Inc()
			return int64(len(buf)), err
		}
		key, _ := cacheKey(s.node)
		if f, err := r.cache.File(key, s.node.Size); err == nil {
			err := r.storeErr(f, *s.chunk, data)
			f.Close()
			if errors.Is(err, cache.ErrNoSpace) {
				// Fetching the rest would keep nothing: the pass ends, and resumes later.
				return int64(len(buf)), fmt.Errorf("%w: the cache is full: %w", ErrIncomplete, err)
			}
		}
		r.storeExtra(s.start, extra)
	}
	return int64(len(buf)), nil
}

// fetchPreemptible reads len(buf) bytes of the blob at off at background priority; a read
// that starts fetching meanwhile ends it with an error wrapping errPreempted.
func (m *Mounted) fetchPreemptible(ctx context.Context, buf []byte, off int64) error {
	pctx, done := m.lfs.reader.preemptible(remote.WithPriority(ctx, remote.PriorityBackground))
	defer done()
	rctx, cancel := context.WithTimeout(pctx, prefetchTimeout)
	defer cancel()
	_, err := readFull(rctx, m.lfs.reader.blob, buf, off)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(pctx), errPreempted) {
		return fmt.Errorf("%w: %w", errPreempted, err)
	}
	return err
}

// decompressAll decompresses the headers before the first chunk. More than a record can keep
// is not read (a bound against gzip bombs) and returns nil: such a layer is completed but
// cannot be verified.
func decompressAll(compressed []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(zr, maxSegmentExtra+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSegmentExtra {
		return nil, nil
	}
	return b, nil
}

// verifyLayer hashes the layer's decompressed data, from the cache, in blob order: the
// original's tar bytes exactly.
func (m *Mounted) verifyLayer(ctx context.Context, segs []segment, want Original) error {
	r := m.lfs.reader
	// The recovered tar's headers, read as it is hashed, give the tree the TOC must describe.
	pr, pw := io.Pipe()
	type result struct {
		tree *artifact.Tree
		err  error
	}
	fromTar := make(chan result, 1)
	go func() {
		t, err := artifact.TreeFromTar(pr)
		io.Copy(io.Discard, pr)
		fromTar <- result{t, err}
	}()
	defer func() { pw.CloseWithError(errors.New("verification ended")); <-fromTar }()
	sum := sha256.New()
	h := io.MultiWriter(sum, pw)
	var n int64
	for _, s := range segs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.chunk != nil {
			key, _ := cacheKey(s.node)
			f, err := r.cache.File(key, s.node.Size)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrIncomplete, err)
			}
			data := make([]byte, s.chunk.Size)
			_, err = f.ReadAt(data, s.chunk.Offset)
			f.Close()
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: chunk at blob offset %d: %v", ErrIncomplete, s.start, err)
			}
			h.Write(data)
			n += int64(len(data))
		}
		key := headSegmentKey
		if s.chunk != nil {
			key = extraKey(s.start)
		}
		extra, ok := r.getRecord(key)
		if !ok && !(s.chunk == nil && s.end == 0) {
			return fmt.Errorf("%w: tar bytes at blob offset %d not local", ErrIncomplete, s.start)
		}
		h.Write(extra)
		n += int64(len(extra))
	}
	got := digest.NewDigest(digest.SHA256, sum)
	if n != want.Size || got != want.DiffID {
		m.lfs.metrics.layerMismatches.Inc()
		return fmt.Errorf("%w: %d bytes hashing to %s, the original has %d bytes hashing to %s", ErrLayerMismatch, n, got, want.Size, want.DiffID)
	}
	// The bytes are the original's; the metadata the node serves must be theirs too.
	pw.Close()
	res := <-fromTar
	fromTar <- res // for the deferred wait
	if res.err == nil {
		res.err = artifact.CompareMetadata(m.idx.Tree, res.tree)
	}
	if res.err != nil {
		m.lfs.metrics.layerMismatches.Inc()
		return fmt.Errorf("%w: the TOC's metadata does not match the original tar: %v", ErrLayerMismatch, res.err)
	}
	return nil
}

// waitRate takes n bytes from the limiter, in pieces no larger than its burst.
func waitRate(ctx context.Context, l *rate.Limiter, n int64) error {
	if l == nil || l.Limit() == rate.Inf {
		return nil
	}
	for n > 0 {
		take := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(take)); err != nil {
			return err
		}
		n -= take
	}
	return nil
}
