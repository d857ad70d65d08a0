package fs

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// flights lets concurrent reads of a missing chunk share one fetch: the first read leads (it
// fetches and stores the chunk), the others wait for its result. A fetch that brings along
// the chunks that follow (read-ahead, neighbours) claims their flights too, so that a read of
// one of them waits for it instead of fetching the same bytes again. Flights are keyed by the
// chunk's blob offset, unique within a layer.
type flights struct {
	mu sync.Mutex
	m  map[int64]*flight
}

// flight is one fetch of a chunk in progress.
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

// errNotFetched lands the flight of a chunk that a fetch meant to bring along and did not
// (the request failed, or the chunk failed verification): a read waiting for it fetches it
// itself.
var errNotFetched = errors.New("chunk not brought along by the fetch that claimed it")

// join returns the flight of key in the air, or, if there is none, a new one that the caller
// leads (lead): it must land it.
func (g *flights) join(key int64) (f *flight, lead bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		return f, false
	}
	return g.add(key), true
}

// claim returns a new flight of key for a fetch that brings key's chunk along, or nil when
// a flight of key is in the air already. The caller must land it.
func (g *flights) claim(key int64) *flight {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.m[key]; ok {
		return nil
	}
	return g.add(key)
}

func (g *flights) add(key int64) *flight {
	f := &flight{done: make(chan struct{})}
	if g.m == nil {
		g.m = make(map[int64]*flight)
	}
	g.m[key] = f
	return f
}

// land publishes the result of flight f of key and ends it. The leader stores a fetched
// chunk before it lands it, so that a read arriving later finds the chunk stored.
func (g *flights) land(key int64, f *flight, res fetched, err error) {
	f.res, f.err = res, err
	close(f.done)
	g.mu.Lock()
	delete(g.m, key)
	g.mu.Unlock()
}

// wait returns the result of f, or an error once ctx ends. The fetch runs under its leader's
// ctx: a waiting read that gets a context error, or errNotFetched, while its own ctx is
// alive may lead a new flight.
func (f *flight) wait(ctx context.Context, key int64) (fetched, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return fetched{}, fmt.Errorf("wait for chunk at blob offset %d: %w", key, ctx.Err())
	}
}
