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
}

// neighbourWindow bounds what a miss fetches beyond its chunk: about one round trip's worth
// of bytes on a 100 Mbit/s, 20 ms link.
const neighbourWindow = 256 << 10

// readNeighbours fetches chunk c with the chunks that follow it in the blob (other files
// included) while they are missing from the cache, up to neighbourWindow compressed bytes, in
// one request; it stores them and returns c's bytes. Any failure is returned for the caller
// to fall back to a plain read of c.
func (r *chunkReader) readNeighbours(ctx context.Context, c Chunk) ([]byte, error) {
	segs := r.neighbours
	k := sort.Search(len(segs), func(i int) bool { return segs[i].start >= c.BlobOffset })
	if k == len(segs) || segs[k].start != c.BlobOffset {
		return nil, errors.New("chunk not among the segments")
	}
	j := k + 1
	for ; j < len(segs) && segs[j].start == segs[j-1].end && segs[j].end-c.BlobOffset <= neighbourWindow; j++ {
		if r.segmentCached(segs[j]) {
			break
		}
	}
	if j == k+1 {
		return nil, errors.New("no neighbour to fetch")
	}
	r.startReading()
	defer r.reading.Add(-1)
	start, end := c.BlobOffset, segs[j-1].end
	buf := make([]byte, end-start)
	if _, err := readFull(ctx, r.blob, buf, start); err != nil {
		return nil, err
	}
	r.metrics.fetchedOnDemand.Add(float64(len(buf)))
	var out []byte
	for i := k; i < j; i++ {
		s := segs[i]
		data, extra, err := decompressSegment(buf[s.start-start:s.end-start], *s.chunk)
		if err != nil {
			if i == k {
				return nil, err
			}
			break
		}
		r.storeExtra(s.start, extra)
		if i == k {
			out = data
			continue
		}
		key, _ := cacheKey(s.node)
		if f, err := r.cache.File(key, s.node.Size); err == nil {
			r.store(f, *s.chunk, data)
			f.Close()
		}
	}
	return out, nil
}

// segmentCached reports whether a chunk segment's bytes are in the cache.
func (r *chunkReader) segmentCached(s segment) bool {
	key, _ := cacheKey(s.node)
	f, err := r.cache.File(key, s.node.Size)
	if err != nil {
		return true // no place to put it: do not fetch it
	}
	defer f.Close()
	return len(f.Missing(s.chunk.Offset, s.chunk.Size)) == 0
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

// readFileAhead is readFile that, on a miss, fetches up to ahead compressed bytes of the
// file's following chunks in the same request (a sequential reader's next reads).
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
		res, err := r.fetch(ctx, n, i, cf, ahead)
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

// fetch returns chunk c's verified bytes, fetched from the blob and stored in cf (if not
// nil). Concurrent fetches of c are one: the reads that join a fetch in flight wait for it.
func (r *chunkReader) fetch(ctx context.Context, n *Node, i int, cf *cache.File, ahead int64) (fetched, error) {
	c := n.Chunks[i]
	for {
		res, err, joined := r.flights.do(ctx, c.BlobOffset, func() (fetched, error) {
			// A flight that has just landed may have stored c since this read missed it.
			if cf != nil && len(cf.Missing(c.Offset, c.Size)) == 0 {
				data := make([]byte, c.Size)
				if r.readCached(cf, data, c.Offset) {
					return fetched{data: data, cached: true}, nil
				}
			}
			if ahead > 0 && cf != nil {
				if data, err := r.readRun(ctx, n, i, cf, ahead); err == nil {
					return fetched{data: data}, nil
				}
			} else if cf != nil && r.neighbours != nil {
				if data, err := r.readNeighbours(ctx, c); err == nil {
					return fetched{data: data}, nil
				}
			}
			data, err := r.read(ctx, c)
			return fetched{data: data}, err
		}, func(res fetched) {
			if !res.cached {
				r.store(cf, c, res.data)
			}
		})
		if err != nil && joined && ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// The read that led the fetch gave up (its timeout or an interrupt): this one
			// still wants the chunk, so it leads a new fetch.
			continue
		}
		return res, err
	}
}

// readRun fetches chunk i of n with the following chunks not yet local, up to ahead
// compressed bytes, in one request; it stores the following ones and returns chunk i's bytes.
// Any failure is returned for the caller to fall back to a plain read of chunk i.
func (r *chunkReader) readRun(ctx context.Context, n *Node, i int, cf *cache.File, ahead int64) ([]byte, error) {
	first := n.Chunks[i]
	j := i + 1
	for ; j < len(n.Chunks); j++ {
		c := n.Chunks[j]
		if c.BlobOffset != n.Chunks[j-1].BlobEnd || c.BlobEnd-first.BlobOffset > ahead || len(cf.Missing(c.Offset, c.Size)) == 0 {
			break
		}
	}
	if j == i+1 {
		return nil, errors.New("nothing to read ahead")
	}
	r.startReading()
	defer r.reading.Add(-1)
	start, end := first.BlobOffset, n.Chunks[j-1].BlobEnd
	buf := make([]byte, end-start)
	if _, err := readFull(ctx, r.blob, buf, start); err != nil {
		return nil, err
	}
	r.metrics.fetchedOnDemand.Add(float64(len(buf)))
	var out []byte
	for k := i; k < j; k++ {
		c := n.Chunks[k]
		data, extra, err := decompressSegment(buf[c.BlobOffset-start:c.BlobEnd-start], c)
		if err != nil {
			if k == i {
				return nil, err
			}
			break
		}
		r.storeExtra(c.BlobOffset, extra)
		if k == i {
			out = data
			continue
		}
		r.store(cf, c, data)
	}
	return out, nil
}

// store writes a verified chunk to the cache. A failure (the disk or the budget full, the
// layer removed meanwhile) costs only a later fetch: it is logged and counted, never fatal.
func (r *chunkReader) store(cf *cache.File, c Chunk, data []byte) {
	if cf == nil {
		return
	}
	err := cf.WriteAt(data, c.Offset)
	if err == nil {
		return
	}
	if !errors.Is(err, cache.ErrClosed) && !errors.Is(err, cache.ErrRemoved) {
		r.metrics.cacheWriteErrors.Inc()
	}
	r.log.WithError(err).WithField("blob_offset", c.BlobOffset).Debug("verified chunk not stored in the cache; served from the network")
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
