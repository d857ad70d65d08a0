package fs

import (
	"context"
	"fmt"
	"sync"
)

// flights lets concurrent reads of a missing chunk share one fetch: the first read leads (it
// fetches and stores the chunk), the others wait for its result. Flights are keyed by the
// chunk's blob offset, unique within a layer.
type flights struct {
	mu sync.Mutex
	m  map[int64]*flight
}

// flight is one fetch of a chunk in progress, or just landed.
type flight struct {
	done chan struct{} // closed once res and err are set
	res  fetched
	err  error
}

// fetched is a chunk's verified bytes, and whether they came from the cache.
type fetched struct {
	data   []byte
	cached bool
}

// do returns the result of fetch for key: run by this caller if no flight for key is in the
// air (then after publishing the result it runs store, and only then lands the flight, so
// that a read arriving later finds the chunk stored), or by the caller that leads it. joined
// reports the latter. A caller waits only as long as its ctx; the leader's fetch runs under
// the leader's ctx, so a joined caller that gets a context error while its own ctx is alive
// may lead a new flight.
func (g *flights) do(ctx context.Context, key int64, fetch func() (fetched, error), store func(fetched)) (res fetched, err error, joined bool) {
	g.mu.Lock()
	if f, ok := g.m[key]; ok {
		g.mu.Unlock()
		select {
		case <-f.done:
			return f.res, f.err, true
		case <-ctx.Done():
			return fetched{}, fmt.Errorf("wait for chunk at blob offset %d: %w", key, ctx.Err()), true
		}
	}
	f := &flight{done: make(chan struct{})}
	if g.m == nil {
		g.m = make(map[int64]*flight)
	}
	g.m[key] = f
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.m, key)
		g.mu.Unlock()
	}()
	f.res, f.err = fetch()
	close(f.done)
	if f.err == nil {
		store(f.res)
	}
	return f.res, f.err, false
}
