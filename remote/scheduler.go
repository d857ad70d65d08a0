package remote

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"
)

// Priority says how urgently a request is needed. The zero value, PriorityOnDemand, is the
// default of every request whose context carries no priority.
type Priority int

const (
	// PriorityOnDemand is a request something is blocked on: a read of a file in a streamed
	// layer, a manifest or a TOC. It never waits for a slot held by lower priorities.
	PriorityOnDemand Priority = iota
	// PriorityPrefetch is a request for the files an image needs at start, fetched ahead of
	// its reads.
	PriorityPrefetch
	// PriorityBackground is a request of the background fetch that makes a whole layer local.
	PriorityBackground

	numPriorities = 3
)

// String is the name of p in metrics and logs.
func (p Priority) String() string {
	switch p {
	case PriorityOnDemand:
		return "on_demand"
	case PriorityPrefetch:
		return "prefetch"
	case PriorityBackground:
		return "background"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

type priorityKey struct{}

// WithPriority returns a context whose registry requests are scheduled at priority p (see
// [WithMaxConcurrency] for the rule). Requests without one are on-demand.
func WithPriority(ctx context.Context, p Priority) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

// PriorityFrom returns the priority ctx carries: PriorityOnDemand unless WithPriority set
// another one.
func PriorityFrom(ctx context.Context) Priority {
	if p, ok := ctx.Value(priorityKey{}).(Priority); ok && p >= 0 && p < numPriorities {
		return p
	}
	return PriorityOnDemand
}

// scheduler admits the requests to one network host. On-demand requests have slots of their
// own (onDemand of them): prefetch and background work never holds one, so an on-demand
// request waits only for other on-demand requests. Prefetch and background requests share
// bulk further slots; a freed one goes to the oldest waiting prefetch request, else to the
// oldest waiting background request. Within a priority, requests are admitted in the order
// they asked.
type scheduler struct {
	host     string
	onDemand int
	bulk     int
	metrics  *Metrics

	mu       sync.Mutex
	inFlight [numPriorities]int
	waiting  [numPriorities]list.List // of *waiter, oldest first
}

// waiter is a request waiting for a slot; granted is set (under the scheduler's lock) and
// ready closed when it has one.
type waiter struct {
	ready   chan struct{}
	granted bool
}

func newScheduler(host string, onDemand, bulk int, m *Metrics) *scheduler {
	return &scheduler{host: host, onDemand: onDemand, bulk: bulk, metrics: m}
}

// free reports whether a request of priority p may start now, counting what is in flight
// only (not who waits).
func (s *scheduler) free(p Priority) bool {
	if p == PriorityOnDemand {
		return s.inFlight[PriorityOnDemand] < s.onDemand
	}
	return s.inFlight[PriorityPrefetch]+s.inFlight[PriorityBackground] < s.bulk
}

// ahead reports whether a request of priority p must wait for others waiting already: of its
// own priority (FIFO), or, for background work, prefetch requests waiting for the same slots.
func (s *scheduler) ahead(p Priority) bool {
	if s.waiting[p].Len() > 0 {
		return true
	}
	return p == PriorityBackground && s.waiting[PriorityPrefetch].Len() > 0
}

// acquire waits for a slot for a request of priority p and returns the function that gives
// it back (idempotent). It fails only when ctx ends first.
func (s *scheduler) acquire(ctx context.Context, p Priority) (release func(), err error) {
	start := time.Now()
	s.mu.Lock()
	if s.free(p) && !s.ahead(p) {
		s.take(p)
		s.mu.Unlock()
		s.observeWait(p, 0)
		return s.releaser(p), nil
	}
	w := &waiter{ready: make(chan struct{})}
	el := s.waiting[p].PushBack(w)
	s.mu.Unlock()

	select {
	case <-w.ready:
		s.observeWait(p, time.Since(start))
		return s.releaser(p), nil
	case <-ctx.Done():
		s.mu.Lock()
		if w.granted {
			// The slot came as ctx ended: pass it on.
			s.mu.Unlock()
			s.releaser(p)()
		} else {
			s.waiting[p].Remove(el)
			s.mu.Unlock()
		}
		return nil, fmt.Errorf("waiting for a %s slot of %s: %w", p, s.host, ctx.Err())
	}
}

// take counts a request of priority p in flight. Called with mu held.
func (s *scheduler) take(p Priority) {
	s.inFlight[p]++
	s.metrics.inFlight.WithLabelValues(s.host, p.String()).Inc()
}

func (s *scheduler) releaser(p Priority) func() {
	return sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.inFlight[p]--
		s.metrics.inFlight.WithLabelValues(s.host, p.String()).Dec()
		s.admit()
	})
}

// admit grants freed slots to waiting requests, highest priority first, oldest first within
// a priority. Called with mu held.
func (s *scheduler) admit() {
	for p := PriorityOnDemand; p < numPriorities; p++ {
		for s.waiting[p].Len() > 0 && s.free(p) {
			w := s.waiting[p].Remove(s.waiting[p].Front()).(*waiter)
			w.granted = true
			s.take(p)
			close(w.ready)
		}
	}
}

func (s *scheduler) observeWait(p Priority, d time.Duration) {
	s.metrics.slotWait.WithLabelValues(s.host, p.String()).Observe(d.Seconds())
}
