package snapshotter

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/containerd/log"
	rillfs "github.com/rillstream/rill/fs"
)

// layerLoadTimeout bounds resolving one layer and loading its TOC in the background.
const layerLoadTimeout = 2 * time.Minute

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

	mu     sync.Mutex
	layers map[string]*loadedLayer
}

func newLayerLoader(r Resolver, limits rillfs.Limits) *layerLoader {
	return &layerLoader{resolver: r, limits: limits, layers: map[string]*loadedLayer{}}
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
		ctx, cancel := context.WithTimeout(context.Background(), layerLoadTimeout)
		defer cancel()
		ll.run(ctx, l, e)
		ll.mu.Lock()
		e.finished = time.Now()
		e.expires = e.finished.Add(imageTTL)
		ll.mu.Unlock()
		close(e.done)
	}()
	return e
}

func (ll *layerLoader) run(ctx context.Context, l LayerLabels, e *loadedLayer) {
	layer, err := ll.resolver.Resolve(ctx, l)
	if err != nil {
		var ns *NotStreamableError
		if errors.As(err, &ns) {
			e.reason, e.err = ns.Reason, err
			return
		}
		e.reason, e.err = "resolve-error", err
		return
	}
	toc, tocJSON, err := rillfs.LoadTOCJSON(ctx, layer.Blob, layer.Desc.Size, layer.TOCDigest, ll.limits)
	if err != nil {
		e.reason, e.err = "toc-fetch-error", err
		if errors.Is(err, rillfs.ErrInvalidTOC) {
			e.reason = "toc-invalid"
		}
		return
	}
	log.L.WithField("layer", l.Layer.String()).WithField("blob", layer.Desc.Digest.String()).Debug("layer resolved and TOC loaded")
	e.layer, e.toc, e.tocJSON, e.reason = layer, toc, tocJSON, layer.Reason
}
