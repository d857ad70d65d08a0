package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/log"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/snapshotter/status"
)

// loadedLayer is a layer resolved and its TOC loaded, or why not.
type loadedLayer struct {
	done     chan struct{}
	layer    RemoteLayer
	toc      *rillfs.TOC
	tocJSON  []byte
	reason   string
	err      error
	finished time.Time // when it was loaded
	expires  time.Time
}

// layerLoader resolves layers and loads their TOCs ahead of containerd's Prepare calls: when
// the first layer of an image is prepared, the others (the cri.image-layers label lists them)
// are resolved concurrently, so their footers and TOCs are on hand, or on the way, when
// containerd asks for them, instead of costing round trips one layer after another.
type layerLoader struct {
	resolver Resolver
	limits   rillfs.Limits
	timeout  time.Duration // bounds resolving one layer and loading its TOC
	health   *hostHealth

	mu     sync.Mutex
	layers map[string]*loadedLayer
}

func newLayerLoader(r Resolver, limits rillfs.Limits, timeout time.Duration, health *hostHealth) *layerLoader {
	return &layerLoader{resolver: r, limits: limits, timeout: timeout, health: health, layers: map[string]*loadedLayer{}}
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
	if ll.layers[loadKey(l)] == e {
		delete(ll.layers, loadKey(l))
	}
	ll.mu.Unlock()
	return e, nil
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
	toc, tocJSON, err := rillfs.LoadTOCJSON(ctx, layer.Blob, layer.Desc.Size, layer.TOCDigest, ll.limits)
	if err != nil {
		e.reason, e.err = status.ReasonTOCFetchError, err
		if errors.Is(err, rillfs.ErrInvalidTOC) {
			e.reason = status.ReasonTOCInvalid
		}
		return
	}
	log.L.WithField("layer", l.Layer.String()).WithField("blob", layer.Desc.Digest.String()).Debug("layer resolved and TOC loaded")
	e.layer, e.toc, e.tocJSON, e.reason = layer, toc, tocJSON, layer.Reason
}
