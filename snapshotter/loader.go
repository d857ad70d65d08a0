package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/snapshotter/status"
)

// loadedLayer is a layer resolved, its TOC loaded and its index built, or why not.
type loadedLayer struct {
	done    chan struct{}
	layer   RemoteLayer
	toc     *rillfs.TOC
	tocJSON []byte
	// idx is built from toc ahead of the Prepare, for the one Prepare that takes the entry
	// (it changes the index as it mounts it); nil for others, which build their own.
	idx      *rillfs.Index
	shared   *loadedTOC // the loader's entry for the TOC
	reason   string
	err      error
	finished time.Time // when it was loaded
	expires  time.Time
}

// layerLoader resolves layers, loads their TOCs and builds their indexes ahead of containerd's
// Prepare calls: when the first layer of an image is prepared, the others (the
// cri.image-layers label lists them) are loaded concurrently, so their footers, TOCs and
// indexes are on hand, or on the way, when containerd asks for them, instead of costing round
// trips and CPU time one layer after another. A streaming artifact's layers record where
// their TOC starts, so that footer and TOC come in one range request.
type layerLoader struct {
	resolver Resolver
	limits   rillfs.Limits
	timeout  time.Duration // bounds resolving one layer and loading its TOC
	health   *hostHealth

	mu     sync.Mutex
	layers map[string]*loadedLayer
	// tocs are the TOCs loaded or loading, by content: every resolution of the same blob
	// with the same TOC digest (a Prepare whose layer was loaded ahead too long ago, the same
	// image pulled at once in two namespaces or under two names) shares one fetch.
	tocs map[tocKey]*loadedTOC
}

// tocKey names a TOC by content: the blob it is in and its digest.
type tocKey struct{ blob, toc digest.Digest }

// loadedTOC is a TOC loaded and indexed, or why not.
type loadedTOC struct {
	done    chan struct{}
	toc     *rillfs.TOC
	tocJSON []byte
	idx     *rillfs.Index // for the first layer that takes it
	err     error
	expires time.Time
}

// tocKept is how long a TOC stays shared once a layer took it.
const tocKept = imageFresh

func newLayerLoader(r Resolver, limits rillfs.Limits, timeout time.Duration, health *hostHealth) *layerLoader {
	return &layerLoader{resolver: r, limits: limits, timeout: timeout, health: health, layers: map[string]*loadedLayer{}, tocs: map[tocKey]*loadedTOC{}}
}

func loadKey(l LayerLabels) string {
	return l.ImageRef + "|" + l.Manifest.String() + "|" + l.Layer.String()
}

// load returns layer l resolved and its TOC loaded, starting the image's other layers in the
// background. The entry is consumed: a later Prepare of the same layer loads it again.
func (ll *layerLoader) load(ctx context.Context, l LayerLabels) (*loadedLayer, error) {
	e, err := ll.take(ctx, l, true)
	if err == nil && time.Since(e.finished) > imageFresh {
		// Loaded ahead long ago (the layers before it took their time): the artifact may have
		// changed since; load it again, as the image's resolution is checked again.
		e, err = ll.take(ctx, l, false)
	}
	if err != nil {
		return nil, err
	}
	return e, e.err
}

// take waits for l to load (starting the image's other layers too when others is set) and
// consumes the entry.
func (ll *layerLoader) take(ctx context.Context, l LayerLabels, others bool) (*loadedLayer, error) {
	e := ll.start(l)
	if others {
		for _, other := range l.Layers {
			if other != l.Layer {
				o := l
				o.Layer = other
				ll.start(o)
			}
		}
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ll.mu.Lock()
	owner := ll.layers[loadKey(l)] == e
	if owner {
		delete(ll.layers, loadKey(l))
	}
	if t := e.shared; t != nil {
		// Loaded for a Prepare that came: the TOC is kept a little longer, for a Prepare of
		// the same blob (a pull of the same image at once; this one, if it finds its
		// resolution too old and resolves it again).
		t.expires = time.Now().Add(tocKept)
		ll.forgetTOC(tocKey{e.layer.Desc.Digest, e.layer.TOCDigest}, t, tocKept)
	}
	ll.mu.Unlock()
	taken := *e
	if !owner {
		taken.idx = nil // another Prepare took it
	}
	return &taken, nil
}

// index returns the layer's index: the one built ahead, or a new one.
func (e *loadedLayer) index() (*rillfs.Index, error) {
	if e.idx != nil {
		return e.idx, nil
	}
	return rillfs.NewIndex(e.toc)
}

// start begins loading l unless it is loaded or loading already.
func (ll *layerLoader) start(l LayerLabels) *loadedLayer {
	key := loadKey(l)
	ll.mu.Lock()
	defer ll.mu.Unlock()
	now := time.Now()
	for k, e := range ll.layers { // forget what nobody came for
		if !e.expires.IsZero() && now.After(e.expires) {
			delete(ll.layers, k)
		}
	}
	for k, t := range ll.tocs {
		if !t.expires.IsZero() && now.After(t.expires) {
			delete(ll.tocs, k)
		}
	}
	if e, ok := ll.layers[key]; ok {
		return e
	}
	e := &loadedLayer{done: make(chan struct{})}
	ll.layers[key] = e
	go func() {
		ll.run(l, e)
		ll.mu.Lock()
		e.finished = time.Now()
		e.expires = e.finished.Add(imageTTL)
		ll.mu.Unlock()
		close(e.done)
	}()
	return e
}

// run loads l within the loader's timeout, unless its registry host is unhealthy; a host
// that does not answer in time is marked unhealthy, one that answers is cleared.
func (ll *layerLoader) run(l LayerLabels, e *loadedLayer) {
	host := registryHost(l.ImageRef)
	if st, bad := ll.health.unhealthy(host); bad {
		e.reason = status.ReasonHostUnhealthy
		e.err = fmt.Errorf("registry host %s failed a Prepare %s ago (%s): pulled in full without waiting for it until %s",
			host, time.Since(st.Since).Round(time.Second), st.LastError, st.Until.Format(time.RFC3339))
		return
	}
	ctx, stop := ll.health.watch(context.Background(), host)
	defer stop()
	ctx, cancel := context.WithTimeoutCause(ctx, ll.timeout, fmt.Errorf("registry host %s: no answer within the prepare timeout (%s): %w", host, ll.timeout, context.DeadlineExceeded))
	defer cancel()
	ll.fetch(ctx, l, e)
	switch {
	case errors.Is(context.Cause(ctx), errHostUnhealthy):
		e.reason, e.err = status.ReasonHostUnhealthy, fmt.Errorf("%w: %w", errHostUnhealthy, e.err)
	case e.err != nil && ctx.Err() != nil:
		e.err = fmt.Errorf("%w: %w", context.Cause(ctx), e.err)
		ll.health.failed(host, e.err)
	case hostFault(e.err):
		ll.health.failed(host, e.err)
	default: // the host answered
		ll.health.ok(host)
	}
}

func (ll *layerLoader) fetch(ctx context.Context, l LayerLabels, e *loadedLayer) {
	layer, err := ll.resolver.Resolve(ctx, l)
	if err != nil {
		var ns *NotStreamableError
		if errors.As(err, &ns) {
			e.reason, e.err = ns.Reason, err
			return
		}
		e.reason, e.err = status.ReasonResolveError, err
		return
	}
	t, err := ll.loadTOC(ctx, layer)
	if err != nil {
		e.reason, e.err = status.ReasonTOCFetchError, err
		if errors.Is(err, rillfs.ErrInvalidTOC) {
			e.reason = status.ReasonTOCInvalid
		}
		return
	}
	log.L.WithField("layer", l.Layer.String()).WithField("blob", layer.Desc.Digest.String()).Debug("layer resolved, TOC loaded and indexed")
	ll.mu.Lock()
	idx := t.idx
	t.idx = nil
	ll.mu.Unlock()
	e.layer, e.toc, e.tocJSON, e.idx, e.shared, e.reason = layer, t.toc, t.tocJSON, idx, t, layer.Reason
}

// loadTOC returns the TOC of layer loaded and indexed, loading it unless it is loaded or
// loading already; the first load bounds the others' wait (its context ends theirs).
func (ll *layerLoader) loadTOC(ctx context.Context, layer RemoteLayer) (*loadedTOC, error) {
	key := tocKey{layer.Desc.Digest, layer.TOCDigest}
	ll.mu.Lock()
	t, loading := ll.tocs[key]
	if !loading {
		t = &loadedTOC{done: make(chan struct{})}
		ll.tocs[key] = t
	}
	ll.mu.Unlock()
	if loading {
		select {
		case <-t.done:
			if t.err != nil && ctx.Err() == nil && (errors.Is(t.err, context.Canceled) || errors.Is(t.err, context.DeadlineExceeded)) {
				return ll.loadTOC(ctx, layer) // the load it waited for ended with its own context
			}
			return t, t.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	defer close(t.done)
	t.toc, t.tocJSON, t.idx, t.err = ll.fetchTOC(ctx, layer)
	ll.mu.Lock()
	t.expires = time.Now().Add(imageTTL) // until a layer takes it
	if t.err != nil && ll.tocs[key] == t {
		delete(ll.tocs, key) // errors are not shared with later loads
	}
	ll.mu.Unlock()
	if t.err == nil {
		ll.forgetTOC(key, t, imageTTL)
	}
	return t, t.err
}

// forgetTOC drops t after d unless it was kept longer since: a node that pulls nothing more
// does not hold the TOCs of its last pull.
func (ll *layerLoader) forgetTOC(key tocKey, t *loadedTOC, d time.Duration) {
	time.AfterFunc(d, func() {
		ll.mu.Lock()
		defer ll.mu.Unlock()
		if ll.tocs[key] == t && !time.Now().Before(t.expires) {
			delete(ll.tocs, key)
		}
	})
}

// fetchTOC reads the footer and TOC of layer (in one range request when the layer's
// annotation says where the TOC starts) and builds its index.
func (ll *layerLoader) fetchTOC(ctx context.Context, layer RemoteLayer) (*rillfs.TOC, []byte, *rillfs.Index, error) {
	hint := artifact.TOCOffsetHint(layer.Desc.Annotations, layer.Desc.Size)
	toc, tocJSON, err := rillfs.LoadTOCJSONAt(ctx, layer.Blob, layer.Desc.Size, hint, layer.TOCDigest, ll.limits)
	if err != nil {
		return nil, nil, nil, err
	}
	if hint != 0 && hint != toc.Offset {
		log.L.WithField("blob", layer.Desc.Digest.String()).Warnf("the layer's %s annotation says %d, its footer %d: the footer is right", artifact.AnnotationTOCOffset, hint, toc.Offset)
	}
	idx, err := rillfs.NewIndex(toc)
	if err != nil {
		return nil, nil, nil, err
	}
	return toc, tocJSON, idx, nil
}
