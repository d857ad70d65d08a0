package remote

import (
	"errors"
	"fmt"
	"sync"
)

// Registry talks to OCI registries on behalf of rill: one per process is enough, and it is
// safe for concurrent use. It remembers per host what it learnt (endpoints, tokens, whether
// multi-range requests work) for its lifetime.
type Registry struct {
	opts    options
	metrics *Metrics
	hosts   hostsCache
	flights flightGroup
}

// New returns a Registry configured by opts over the defaults.
func New(opts ...Option) (*Registry, error) {
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.maxAttempts < 1:
		return nil, errors.New("remote: retry attempts must be at least 1")
	case o.maxConcurrency < 1:
		return nil, errors.New("remote: max concurrency must be at least 1")
	case o.bulkConcurrency < 1:
		return nil, errors.New("remote: bulk concurrency must be at least 1")
	case o.maxRangesPerReq < 1:
		return nil, errors.New("remote: max ranges per request must be at least 1")
	case o.requestTimeout <= 0:
		return nil, errors.New("remote: request timeout must be positive")
	case o.coalesceGap < 0:
		return nil, errors.New("remote: coalesce gap must not be negative")
	}
	if o.credentials == nil {
		o.credentials = Anonymous()
	}
	if o.keychain == nil {
		o.keychain = credentialsKeychain{o.credentials}
	}
	m := o.metrics
	if m == nil {
		m = NewMetrics()
	}
	return &Registry{
		opts:    o,
		metrics: m,
		hosts: hostsCache{
			hosts: map[string]*hostsEntry{},
			state: map[string]*hostState{},
		},
		flights: flightGroup{m: map[flightKey]*flight{}},
	}, nil
}

var errNoHost = errors.New("no usable host")

// errInvalid formats an invalid-argument error.
func errInvalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errInvalidArgument)
}

// flightGroup shares identical in-flight range fetches between callers. A caller joins only
// a flight at least as urgent as itself: an on-demand read never waits on a background
// fetch of the same range queued behind other bulk work.
type flightGroup struct {
	mu sync.Mutex
	m  map[flightKey]*flight
}

type flightKey struct {
	blob     string
	offset   int64
	length   int64
	priority Priority
}

type flight struct {
	done chan struct{}
	data []byte
	err  error
}
