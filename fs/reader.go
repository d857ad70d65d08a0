package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rillstream/rill/cache"
	"github.com/sirupsen/logrus"
)

// ErrChunkVerification marks a chunk whose bytes did not match its digest in the TOC, twice.
var ErrChunkVerification = errors.New("chunk failed verification")

// chunkReader reads chunks of a layer blob and returns only verified bytes: from a file's
// cached content where it has it (stored only once verified), else fetched from the blob,
// verified, and stored in the cache.
type chunkReader struct {
	blob io.ReaderAt
	// cache is the layer's cache (nil: none), for the segments' extra bytes.
	cache   *cache.Layer
	metrics *Metrics
	log     *logrus.Entry
	// flights shares the fetch of a chunk among the reads that need it at the same time.
	flights flights
	// reading counts fetches for reads in flight: background work waits while it is not 0.
	reading atomic.Int64
	// preemptMu guards bulk: the background transfers in flight, which a read that starts
	// fetching ends (see preemptible).
	preemptMu sync.Mutex
	bulk      map[*context.CancelCauseFunc]struct{}
	// neighbours are the layer's chunk segments in blob order (nil without a cache): a miss
	// also fetches the chunks that follow in the blob — files used together sit together.
	neighbours []segment
	// buffer keeps the chunks the cache could not store (nil: none).
	buffer *ChunkBuffer
}

// neighbourWindow bounds what a miss fetches beyond its chunk: about one round trip's worth
// of bytes on a 100 Mbit/s, 20 ms link.
const neighbourWindow = 256 << 10

// spanChunk is a chunk that a fetch brings along with the chunk it was started for.
type spanChunk struct {
	chunk  Chunk
	cf     *cache.File // where it is stored
	opened bool        // cf was opened for the fetch: it closes it
	flight *flight     // claimed for the chunk: landed once it is stored, or not fetched
}

// planNeighbours returns the chunks that follow chunk to of file n in the blob and that a
// miss of chunk i (i ≤ to; the chunks between are the read's own) fetches along: files used
// together sit together, so a miss brings along the rest of a small file and the files that
// follow it, while they are missing from the cache and not being fetched, up to
// neighbourWindow compressed bytes from chunk i. A large file read at random is read in
// places: a miss inside it brings along nothing (a sequential reader gets read-ahead
// instead); a miss of its last chunk brings along the files that follow. cf is n's cached
// content. It claims the flights of the chunks it returns.
func (r *chunkReader) planNeighbours(n *Node, i, to int, cf *cache.File) []spanChunk {
	c := n.Chunks[i]
	last := n.Chunks[len(n.Chunks)-1]
	if last.BlobEnd-n.Chunks[0].BlobOffset > neighbourWindow && to < len(n.Chunks)-1 {
		return nil
	}
	segs := r.neighbours
	from := n.Chunks[to].BlobOffset
	k := sort.Search(len(segs), func(i int) bool { return segs[i].start >= from })
	if k == len(segs) || segs[k].start != from {
		return nil
	}
	var span []spanChunk
	for j := k + 1; j < len(segs) && segs[j].start == segs[j-1].end && segs[j].end-c.BlobOffset <= neighbourWindow; j++ {
		s := segs[j]
		sc := spanChunk{chunk: *s.chunk, cf: cf}
		if s.node != n {
			key, _ := cacheKey(s.node)
			f, err := r.cache.File(key, s.node.Size)
			if err != nil {
				break // no place to put it: do not fetch it
			}
			sc.cf, sc.opened = f, true
		}
		if len(sc.cf.Missing(sc.chunk.Offset, sc.chunk.Size)) == 0 {
			sc.close()
			break
		}
		if sc.flight = r.flights.claim(sc.chunk.BlobOffset); sc.flight == nil {
			sc.close()
			break
		}
		span = append(span, sc)
	}
	return span
}

// close closes the cached file the fetch opened for the chunk.
func (sc spanChunk) close() {
	if sc.opened {
		sc.cf.Close()
	}
}

// yieldPoll is how often background work checks whether reads are still fetching.
const yieldPoll = 2 * time.Millisecond

// yield waits while reads are fetching, so that background fetches never delay them.
func (r *chunkReader) yield(ctx context.Context) {
	for r.reading.Load() > 0 && ctx.Err() == nil {
		time.Sleep(yieldPoll)
	}
}

// errPreempted is the cause of a background transfer ended for a read.
var errPreempted = errors.New("preempted by a read")

// startReading counts a read's fetch in flight and ends the background transfers in flight.
func (r *chunkReader) startReading() {
	r.reading.Add(1)
	r.preemptMu.Lock()
	defer r.preemptMu.Unlock()
	for cancel := range r.bulk {
		(*cancel)(errPreempted)
	}
	clear(r.bulk)
}

// preemptible returns a context for a background transfer that a read starting to fetch
// ends, with errPreempted as its cause, and the function to call once the transfer is over.
//
// Why: the link's bandwidth is shared by the transfers in flight, so a read that starts
// while a bulk transfer is in flight would share the link with it until it ends, however
// the registry's slots are scheduled (on a saturated 20 Mbit/s link this doubled the
// latency of a cold 256 KiB read). Ended, the transfer frees the link within a few packets;
// the background fetch then waits for the reads (yield) and asks for the range again. What
// it had received is lost: that is why background requests are moderate in size
// (backgroundRange), and why prefetch, which reads are about to need, is not preempted.
func (r *chunkReader) preemptible(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	r.preemptMu.Lock()
	if r.bulk == nil {
		r.bulk = map[*context.CancelCauseFunc]struct{}{}
	}
	r.bulk[&cancel] = struct{}{}
	r.preemptMu.Unlock()
	if r.reading.Load() > 0 {
		cancel(errPreempted) // a read started between the caller's yield and now
	}
	return ctx, func() {
		r.preemptMu.Lock()
		delete(r.bulk, &cancel)
		r.preemptMu.Unlock()
		cancel(nil)
	}
}

// read returns the uncompressed bytes of c, verified against c.Digest. A chunk that fails
// verification is read once more (a transfer may have been corrupted on the way); a second
// failure is an error wrapping ErrChunkVerification.
func (r *chunkReader) read(ctx context.Context, c Chunk) ([]byte, error) {
	return r.readAttempts(ctx, c, 2)
}

// readAttempts is read with at most attempts fetches of c; each that fails verification is
// counted.
func (r *chunkReader) readAttempts(ctx context.Context, c Chunk, attempts int) ([]byte, error) {
	var lastErr error
	for attempt := 0; attempt < attempts; attempt++ {
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
	r.startReading()
	defer r.reading.Add(-1)
	compressed := make([]byte, c.BlobEnd-c.BlobOffset)
	if _, err := readFull(ctx, r.blob, compressed, c.BlobOffset); err != nil {
		return nil, fmt.Errorf("fetch chunk at blob offset %d: %w", c.BlobOffset, err)
	}
	r.metrics.fetchedOnDemand.Add(float64(len(compressed)))
	data, extra, err := decompressSegment(compressed, c)
	if err == nil {
		r.storeExtra(c.BlobOffset, extra)
	}
	return data, err
}

// readFile reads len(p) bytes of file n at off (fewer at the end of the file) through its
// chunks. cf is the file's cached content, or nil to read without a cache.
func (r *chunkReader) readFile(ctx context.Context, n *Node, cf *cache.File, p []byte, off int64) (int, error) {
	got, _, err := r.readFileAhead(ctx, n, cf, p, off, 0)
	return got, err
}

// readFileAhead is readFile that, on a miss, fetches the read's chunks in one request, with
// up to ahead compressed bytes of the file's following chunks (a sequential reader's next
// reads).
// It also reports whether any of the bytes came from the network.
func (r *chunkReader) readFileAhead(ctx context.Context, n *Node, cf *cache.File, p []byte, off int64, ahead int64) (int, bool, error) {
	if off >= n.Size || len(p) == 0 {
		return 0, false, nil
	}
	network := false
	end := min(off+int64(len(p)), n.Size)
	total := 0
	// The first chunk that holds off.
	i := searchChunk(n.Chunks, off)
	for ; i < len(n.Chunks) && n.Chunks[i].Offset < end; i++ {
		c := n.Chunks[i]
		from := max(off, c.Offset) // the part of c to read, in file offsets
		to := min(end, c.Offset+c.Size)
		dst := p[from-off : to-off]
		if cf != nil && r.readCached(cf, dst, from) {
			r.metrics.hitBytes.Add(float64(len(dst)))
			total += len(dst)
			continue
		}
		if data, ok := r.buffer.get(r, c.BlobOffset); ok {
			r.metrics.bufferHitBytes.Add(float64(len(dst)))
			total += copy(dst, data[from-c.Offset:to-c.Offset])
			continue
		}
		res, err := r.fetch(ctx, n, i, cf, end, ahead)
		if err != nil {
			return total, true, err
		}
		total += copy(dst, res.data[from-c.Offset:to-c.Offset])
		if res.cached {
			r.metrics.hitBytes.Add(float64(len(dst)))
		} else {
			r.metrics.missBytes.Add(float64(len(dst)))
			network = true
		}
	}
	return total, network, nil
}

// readCached reads len(p) bytes at file offset off from the cache, reporting whether it
// had all of them. Anything but a hit (not cached, or the cache failed) is a miss: the bytes
// are fetched.
func (r *chunkReader) readCached(cf *cache.File, p []byte, off int64) bool {
	n, err := cf.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil && !errors.Is(err, cache.ErrNotCached) {
		r.log.WithError(err).WithField("offset", off).Debug("cache read failed; fetching")
	}
	return err == nil
}

// fetch returns chunk i of n's verified bytes, fetched from the blob and stored in cf (if
// not nil). Concurrent fetches of a chunk are one: a read of a chunk that a fetch in flight
// brings — whether for another read of it, or along with another chunk — waits for it.
func (r *chunkReader) fetch(ctx context.Context, n *Node, i int, cf *cache.File, end, ahead int64) (fetched, error) {
	c := n.Chunks[i]
	for {
		f, lead := r.flights.join(c.BlobOffset)
		if lead {
			res, err := r.lead(ctx, n, i, cf, end, ahead)
			r.flights.land(c.BlobOffset, f, res, err)
			return res, err
		}
		res, err := f.wait(ctx, c.BlobOffset)
		if err != nil && ctx.Err() == nil && (errors.Is(err, errNotFetched) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// The read that led the fetch gave up (its timeout or an interrupt), or the fetch
			// that was to bring the chunk along did not: this read still wants the chunk, so
			// it leads a new fetch.
			continue
		}
		return res, err
	}
}

// lead fetches chunk i of n for a read up to file offset end that leads its flight, in one
// request with the chunks that follow it when they are wanted — the rest of the read's, then
// read-ahead of ahead compressed bytes for a sequential reader, else the neighbours — and
// stores it in cf.
func (r *chunkReader) lead(ctx context.Context, n *Node, i int, cf *cache.File, end, ahead int64) (fetched, error) {
	c := n.Chunks[i]
	// A flight that has just landed may have stored c since this read missed it.
	if cf != nil && len(cf.Missing(c.Offset, c.Size)) == 0 {
		data := make([]byte, c.Size)
		if r.readCached(cf, data, c.Offset) {
			return fetched{data: data, cached: true}, nil
		}
	}
	var following []spanChunk
	if cf != nil {
		following = r.planRun(n, i, cf, end, ahead)
		to := i + len(following) // the last chunk planned
		if ahead == 0 && r.neighbours != nil && n.Chunks[to].Offset+n.Chunks[to].Size >= end {
			following = append(following, r.planNeighbours(n, i, to, cf)...)
		}
	}
	var data []byte
	err := errNotFetched
	attempts := 2 // a chunk that fails verification is fetched once more
	if len(following) > 0 {
		data, err = r.readSpan(ctx, c, following)
		if errors.Is(err, ErrChunkVerification) {
			// Fetched, and wrong: that was the first of its two fetches.
			r.metrics.verificationFailures.Inc()
			attempts = 1
		}
	}
	if err != nil {
		// Alone, or again if the fetch of the span failed (once more only if the span
		// brought c and it failed verification).
		data, err = r.readAttempts(ctx, c, attempts)
	}
	if err != nil {
		return fetched{}, err
	}
	r.store(cf, c, data)
	return fetched{data: data}, nil
}

// planRun returns the chunks of n that follow chunk i in the blob, missing from cf and not
// being fetched: those of a read up to file offset end, then up to ahead compressed bytes
// from chunk i's start (a sequential reader's next reads). It claims their flights.
func (r *chunkReader) planRun(n *Node, i int, cf *cache.File, end, ahead int64) []spanChunk {
	first := n.Chunks[i]
	var span []spanChunk
	for j := i + 1; j < len(n.Chunks); j++ {
		c := n.Chunks[j]
		if c.BlobOffset != n.Chunks[j-1].BlobEnd || (c.Offset >= end && c.BlobEnd-first.BlobOffset > ahead) || len(cf.Missing(c.Offset, c.Size)) == 0 {
			break
		}
		f := r.flights.claim(c.BlobOffset)
		if f == nil {
			break
		}
		span = append(span, spanChunk{chunk: c, cf: cf, flight: f})
	}
	return span
}

// readSpan fetches chunk c with the chunks that follow it in the blob (following, whose
// flights it claimed) in one request, stores and lands the following ones — those it could
// not fetch or verify land with errNotFetched — and returns c's bytes. Any failure for c is
// returned for the caller to fall back to a plain read of c. Chunks that fail verification
// are counted here, c by the caller.
func (r *chunkReader) readSpan(ctx context.Context, c Chunk, following []spanChunk) ([]byte, error) {
	start, end := c.BlobOffset, following[len(following)-1].chunk.BlobEnd
	buf := make([]byte, end-start)
	r.startReading()
	_, err := readFull(ctx, r.blob, buf, start)
	r.reading.Add(-1)
	if err == nil {
		r.metrics.fetchedOnDemand.Add(float64(len(buf)))
	}
	// decompress returns the verified bytes of a chunk of the span.
	decompress := func(c Chunk) ([]byte, error) {
		if err != nil {
			return nil, err
		}
		data, extra, err := decompressSegment(buf[c.BlobOffset-start:c.BlobEnd-start], c)
		if err == nil {
			r.storeExtra(c.BlobOffset, extra)
		}
		return data, err
	}
	out, outErr := decompress(c)
	for _, sc := range following {
		data, err := decompress(sc.chunk)
		if err != nil {
			if errors.Is(err, ErrChunkVerification) {
				r.metrics.verificationFailures.Inc() // never served; its readers fetch it again
			}
			r.flights.land(sc.chunk.BlobOffset, sc.flight, fetched{}, fmt.Errorf("%w: %w", errNotFetched, err))
			sc.close()
			continue
		}
		r.store(sc.cf, sc.chunk, data)
		r.flights.land(sc.chunk.BlobOffset, sc.flight, fetched{data: data}, nil)
		sc.close()
	}
	return out, outErr
}

// store writes a verified chunk to the cache. A failure (the disk or the budget full, the
// layer removed meanwhile) costs only a later fetch: it is logged and counted, never fatal.
func (r *chunkReader) store(cf *cache.File, c Chunk, data []byte) {
	if err := r.storeErr(cf, c, data); errors.Is(err, cache.ErrNoSpace) {
		r.buffer.put(r, c.BlobOffset, data)
	}
}

// storeErr is store without the memory buffer: it returns the cache's error.
func (r *chunkReader) storeErr(cf *cache.File, c Chunk, data []byte) error {
	if cf == nil {
		return nil
	}
	err := cf.WriteAt(data, c.Offset)
	if err == nil {
		return nil
	}
	if !errors.Is(err, cache.ErrClosed) && !errors.Is(err, cache.ErrRemoved) {
		r.metrics.cacheWriteErrors.Inc()
	}
	r.log.WithError(err).WithField("blob_offset", c.BlobOffset).Debug("verified chunk not stored in the cache; served from the network")
	return err
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
