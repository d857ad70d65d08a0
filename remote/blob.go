package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// BlobReader reads byte ranges of one blob. It is an io.ReaderAt, and ReadRanges fetches many
// ranges at once in as few requests as the registry allows. Safe for concurrent use.
type BlobReader struct {
	r      *Registry
	ref    repoRef
	desc   ocispec.Descriptor
	eps    []*endpoint
	key    string
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	epIdx    int      // the endpoint in use: mirrors first, the upstream last
	direct   *url.URL // the discovered redirect target of the blob, if any
	directAt time.Time
}

var _ io.ReaderAt = (*BlobReader)(nil)

// BlobReader returns a reader of the blob desc in the repository of ref. It makes no request:
// the first read discovers where the blob is served from. ReadAt calls are bounded by ctx (its
// values and cancellation, not its deadline) and by Close.
func (r *Registry) BlobReader(ctx context.Context, ref string, desc ocispec.Descriptor) (*BlobReader, error) {
	rr, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob of %s: digest %q: %w", rr, desc.Digest, errInvalidArgument)
	}
	if desc.Size < 0 {
		return nil, errInvalid("blob %s of %s: negative size", desc.Digest, rr)
	}
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityPull)
	if err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	return &BlobReader{
		r: r, ref: rr, desc: desc, eps: eps,
		key: rr.host + "/" + rr.repo + "@" + desc.Digest.String(),
		ctx: bctx, cancel: func() { stop(); cancel() },
	}, nil
}

// Size is the size of the blob.
func (b *BlobReader) Size() int64 { return b.desc.Size }

// Close ends reads in flight and makes later ReadAt calls fail.
func (b *BlobReader) Close() error {
	b.cancel()
	return nil
}

// ReadAt reads len(p) bytes at off, fewer with io.EOF at the end of the blob.
func (b *BlobReader) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(b.ctx, p, off)
}

// ReadAtContext is ReadAt bounded by ctx.
func (b *BlobReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errInvalid("read of %s at negative offset %d", b.desc.Digest, off)
	}
	if off >= b.desc.Size {
		return 0, io.EOF
	}
	n := int64(len(p))
	if rest := b.desc.Size - off; n > rest {
		n = rest
	}
	if n == 0 {
		return 0, nil
	}
	data, err := b.ReadRanges(ctx, []Range{{Offset: off, Length: n}})
	if err != nil {
		return 0, err
	}
	copy(p, data[0])
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReadRanges reads every range of the blob and returns their bytes in the order asked. Ranges
// that overlap or nearly touch are fetched as one span; spans go out together as multi-range
// requests where the host serves them, else as concurrent single-range requests; a span
// already in flight for another caller is shared. Every range must lie within the blob.
func (b *BlobReader) ReadRanges(ctx context.Context, ranges []Range) ([][]byte, error) {
	for _, rg := range ranges {
		if rg.Offset < 0 || rg.Length < 0 || rg.end() > b.desc.Size || rg.end() < rg.Offset {
			return nil, fmt.Errorf("range %d+%d of blob %s (%d bytes): %w", rg.Offset, rg.Length, b.desc.Digest, b.desc.Size, errdefs.ErrOutOfRange)
		}
	}
	spans := coalesce(ranges, b.r.opts.coalesceGap)
	got, err := b.shared(ctx, spans)
	if err != nil {
		return nil, fmt.Errorf("read blob %s of %s: %w", b.desc.Digest, b.ref.host+"/"+b.ref.repo, err)
	}
	out := make([][]byte, len(ranges))
	for i, rg := range ranges {
		if rg.Length == 0 {
			out[i] = []byte{}
			continue
		}
		j := sort.Search(len(spans), func(j int) bool { return spans[j].end() > rg.Offset })
		from := rg.Offset - spans[j].Offset
		out[i] = append([]byte(nil), got[j][from:from+rg.Length]...)
	}
	return out, nil
}

// shared fetches spans, joining identical spans already in flight. A joined fetch that ended
// because its own caller went away is fetched again.
func (b *BlobReader) shared(ctx context.Context, spans []Range) ([][]byte, error) {
	res := make([][]byte, len(spans))
	pending := make([]int, len(spans))
	for i := range pending {
		pending[i] = i
	}
	g := &b.r.flights
	prio := PriorityFrom(ctx)
	keyOf := func(i int) flightKey {
		return flightKey{blob: b.key, offset: spans[i].Offset, length: spans[i].Length, priority: prio}
	}
	for round := 0; len(pending) > 0; round++ {
		var mine []int
		joined := map[int]*flight{}
		owned := map[int]*flight{}
		g.mu.Lock()
	pendingLoop:
		for _, i := range pending {
			k := keyOf(i)
			for k.priority = PriorityOnDemand; k.priority <= prio && round < 3; k.priority++ {
				if f, ok := g.m[k]; ok {
					joined[i] = f
					continue pendingLoop
				}
			}
			k.priority = prio
			if _, ok := g.m[k]; ok {
				// A flight of this range and priority that this caller no longer joins
				// (its third round): fetch alone, without replacing it.
				mine = append(mine, i)
				continue
			}
			f := &flight{done: make(chan struct{})}
			g.m[k] = f
			owned[i] = f
			mine = append(mine, i)
		}
		g.mu.Unlock()
		if len(joined) > 0 {
			b.r.metrics.sharedRead.Add(float64(len(joined)))
		}
		if len(mine) > 0 {
			sub := make([]Range, len(mine))
			for n, i := range mine {
				sub[n] = spans[i]
			}
			data, err := b.fetch(ctx, sub)
			g.mu.Lock()
			for n, i := range mine {
				if err == nil {
					res[i] = data[n]
				}
				f := owned[i]
				if f == nil {
					continue
				}
				if err != nil {
					f.err = err
				} else {
					f.data = data[n]
				}
				if k := keyOf(i); g.m[k] == f {
					delete(g.m, k)
				}
				close(f.done)
			}
			g.mu.Unlock()
			if err != nil {
				return nil, err
			}
		}
		pending = pending[:0]
		for i, f := range joined {
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if f.err != nil {
				if errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded) {
					pending = append(pending, i)
					continue
				}
				return nil, f.err
			}
			res[i] = f.data
		}
	}
	return res, nil
}

// fetch gets spans (sorted, disjoint) in multi-range requests where the host allows them,
// else one request per span, concurrently.
func (b *BlobReader) fetch(ctx context.Context, spans []Range) ([][]byte, error) {
	out := make([][]byte, len(spans))
	idx := make(map[int64]int, len(spans))
	for i, s := range spans {
		idx[s.Offset] = i
	}
	var mu sync.Mutex
	store := func(got map[int64][]byte) {
		mu.Lock()
		defer mu.Unlock()
		for off, d := range got {
			out[idx[off]] = d
		}
	}
	var groups [][]Range
	if u, _, _ := b.target(); len(spans) > 1 && !b.r.state(u.Host).noMultiRange.Load() {
		for i := 0; i < len(spans); i += b.r.opts.maxRangesPerReq {
			groups = append(groups, spans[i:min(i+b.r.opts.maxRangesPerReq, len(spans))])
		}
	} else {
		for i := range spans {
			groups = append(groups, spans[i:i+1])
		}
	}
	eg, ectx := errgroup.WithContext(ctx)
	for _, grp := range groups {
		eg.Go(func() error {
			got, err := b.fetchGroup(ectx, grp)
			if err != nil {
				return err
			}
			store(got)
			// What a multi-range answer left out (the host does not do multi-range, as it
			// has just learnt) goes out one span per request.
			var missing []Range
			for _, s := range grp {
				if _, ok := got[s.Offset]; !ok {
					missing = append(missing, s)
				}
			}
			for _, s := range missing {
				eg.Go(func() error {
					got, err := b.fetchGroup(ectx, []Range{s})
					if err != nil {
						return err
					}
					if _, ok := got[s.Offset]; !ok {
						return fmt.Errorf("range %s: registry did not return it", s)
					}
					store(got)
					return nil
				})
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// target is where the next request for the blob goes: the discovered redirect target while
// it is fresh, else the blob URL on the current endpoint.
func (b *BlobReader) target() (*url.URL, bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.direct != nil && time.Since(b.directAt) < b.r.opts.redirectMaxAge {
		return b.direct, true, b.epIdx
	}
	b.direct = nil
	return b.eps[b.epIdx].url(b.ref.repo, "blobs/"+b.desc.Digest.String(), nil), false, b.epIdx
}

func (b *BlobReader) setDirect(u *url.URL, epIdx int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.epIdx == epIdx {
		b.direct, b.directAt = u, time.Now()
	}
}

func (b *BlobReader) dropDirect(u *url.URL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.direct == u {
		b.direct = nil
	}
}

// nextEndpoint moves from endpoint epIdx to the next one, if there is one.
func (b *BlobReader) nextEndpoint(epIdx int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.epIdx != epIdx {
		return true // someone else moved on already
	}
	if epIdx+1 >= len(b.eps) {
		return false
	}
	b.epIdx++
	b.direct = nil
	return true
}

// errMultiRangeRefused says the host answered a multi-range request with something else.
var errMultiRangeRefused = errors.New("multi-range request refused")

// fetchGroup makes one request (with retries) for the spans of grp and returns the bytes of
// the spans the response held, by offset; all of them for a single span.
func (b *BlobReader) fetchGroup(ctx context.Context, grp []Range) (map[int64][]byte, error) {
	var got map[int64][]byte
	u0, _, _ := b.target()
	err := b.r.withRetry(ctx, u0.Host, "blob_range", func(ctx context.Context) error {
		u, direct, epIdx := b.target()
		ep := b.eps[epIdx]
		if len(grp) > 1 && b.r.state(u.Host).noMultiRange.Load() {
			got = map[int64][]byte{}
			return nil // the caller fetches them one by one
		}
		var err error
		got, err = b.attempt(ctx, ep, u, direct, grp)
		if err == nil {
			return nil
		}
		if errors.Is(err, errMultiRangeRefused) {
			got = map[int64][]byte{}
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if direct {
			// The redirect target expired or failed: discover it again through the registry.
			b.dropDirect(u)
			log.G(ctx).WithFields(log.Fields{"blob": b.desc.Digest, "host": u.Host}).WithError(err).Debug("blob URL failed; asking the registry again")
			return retryable("redirect_refresh", time.Millisecond, err)
		}
		if epIdx < len(b.eps)-1 && b.nextEndpoint(epIdx) {
			log.G(ctx).WithFields(log.Fields{"blob": b.desc.Digest, "host": u.Host}).WithError(err).Debug("mirror failed; trying the next host")
			return retryable("next_host", time.Millisecond, err)
		}
		return err
	})
	return got, err
}

// attempt is one request for grp, with every check on the response.
func (b *BlobReader) attempt(ctx context.Context, ep *endpoint, u *url.URL, direct bool, grp []Range) (map[int64][]byte, error) {
	// A response may hold at most the extent of the spans (servers may merge close ranges).
	want := grp[len(grp)-1].end() - grp[0].Offset
	req := &request{
		ep: ep, repo: b.ref.repo, method: http.MethodGet, u: u, op: "blob_range", direct: direct,
		header: http.Header{"Range": {rangeHeader(grp)}},
	}
	if direct {
		req.op = "blob_range_direct"
	}
	ctx = docker.WithScope(ctx, "repository:"+b.ref.repo+":pull")
	resp, err := b.r.send(ctx, req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	host := u.Host
	final := resp.Request.URL
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		if len(grp) > 1 {
			b.refuseMultiRange(ctx, host, "200_full_body")
			return nil, errMultiRangeRefused
		}
		if grp[0].Offset == 0 && grp[0].Length == b.desc.Size && resp.ContentLength == b.desc.Size {
			data, err := readExactly(resp.Body, b.desc.Size)
			if err != nil {
				return nil, retryable("truncated", 0, fmt.Errorf("GET %s: %w", redactURL(u), err))
			}
			b.r.metrics.bytes.WithLabelValues(host, req.op).Add(float64(len(data)))
			return map[int64][]byte{0: data}, nil
		}
		return nil, fmt.Errorf("GET %s: asked for bytes %s, the server ignored the Range header and sent the whole blob: %w", redactURL(u), grp[0], errdefs.ErrNotImplemented)
	case http.StatusBadRequest:
		if len(grp) > 1 {
			drain(resp)
			b.refuseMultiRange(ctx, host, "400")
			return nil, errMultiRangeRefused
		}
		return nil, statusError(req, resp)
	default:
		if direct && (resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusNotFound) {
			err := statusError(req, resp)
			return nil, retryable("redirect_expired", 0, err)
		}
		return nil, statusError(req, resp)
	}

	// 206: the body must hold exactly the bytes asked for, at the offsets asked for.
	var parts []part
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(strings.ToLower(ct), "multipart/byteranges") {
		parts, err = parseMultipart(resp.Body, ct, b.desc.Size, want)
	} else {
		var cr contentRange
		cr, err = parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && cr.size != b.desc.Size {
			err = fmt.Errorf("Content-Range %s is of a blob of %d bytes, not %d", cr, cr.size, b.desc.Size)
		}
		if err == nil && len(grp) == 1 && (cr.first != grp[0].Offset || cr.last != grp[0].end()-1) {
			err = fmt.Errorf("asked for bytes %s, got Content-Range %s", grp[0], cr)
		}
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != cr.last-cr.first+1 {
			err = fmt.Errorf("Content-Length %d does not match Content-Range %s", resp.ContentLength, cr)
		}
		if err == nil {
			var p part
			p, err = readPart(resp.Body, cr, want)
			parts = []part{p}
		}
	}
	if err != nil {
		return nil, retryable("bad_response", 0, fmt.Errorf("GET %s: %w", redactURL(u), err))
	}
	got := map[int64][]byte{}
	for _, s := range grp {
		for _, p := range parts {
			if p.offset <= s.Offset && s.end() <= p.offset+int64(len(p.data)) {
				got[s.Offset] = p.data[s.Offset-p.offset : s.end()-p.offset]
				break
			}
		}
	}
	if len(got) == 0 {
		held := make([]string, len(parts))
		for i, p := range parts {
			held[i] = Range{Offset: p.offset, Length: int64(len(p.data))}.String()
		}
		return nil, retryable("bad_response", 0, fmt.Errorf("GET %s: asked for bytes %s, response held bytes %s", redactURL(u), strings.TrimPrefix(rangeHeader(grp), "bytes="), strings.Join(held, ",")))
	}
	if len(got) < len(grp) {
		// A single range answered to a multi-range request (some registries read only the
		// first range of the header).
		b.refuseMultiRange(ctx, host, "partial")
	}
	var n int
	for _, d := range got {
		n += len(d)
	}
	b.r.metrics.bytes.WithLabelValues(host, req.op).Add(float64(n))
	if !direct && (final.Host != u.Host || final.Path != u.Path) {
		b.setDirect(final, b.epIdxOf(ep))
	}
	return got, nil
}

func (b *BlobReader) epIdxOf(ep *endpoint) int {
	for i, e := range b.eps {
		if e == ep {
			return i
		}
	}
	return -1
}

func (b *BlobReader) refuseMultiRange(ctx context.Context, host, how string) {
	if b.r.state(host).noMultiRange.CompareAndSwap(false, true) {
		b.r.metrics.fallbacks.WithLabelValues(host, how).Inc()
		log.G(ctx).WithFields(log.Fields{"host": host, "answer": how}).Info("host does not serve multi-range requests; using single ranges from now on")
	}
}
