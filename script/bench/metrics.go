package main

import (
	"context"

	"github.com/rillstream/rill/test/harness"
)

// fetchKinds are the kinds of rill_fs_fetched_bytes_total, in the order reports show them.
func fetchKinds() []string { return []string{"on_demand", "prefetch", "background"} }

// rillMetrics are the counters the benchmark reads from rill-snapshotter.
type rillMetrics struct {
	fetched  map[string]int64 // compressed bytes fetched, by kind
	requests int64            // registry requests, all kinds
}

// scrape reads rill-snapshotter's Prometheus endpoint.
func scrape(ctx context.Context, env *harness.Env) (*rillMetrics, error) {
	samples, err := env.Snapshotter.Scrape(ctx)
	if err != nil {
		return nil, err
	}
	m := &rillMetrics{fetched: map[string]int64{}, requests: int64(samples.Sum("rill_remote_requests_total", nil))}
	for _, kind := range fetchKinds() {
		m.fetched[kind] = int64(samples.Sum("rill_fs_fetched_bytes_total", map[string]string{"kind": kind}))
	}
	return m, nil
}
