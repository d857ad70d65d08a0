package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// fetchKinds are the kinds of rill_fs_fetched_bytes_total, in the order reports show them.
func fetchKinds() []string { return []string{"on_demand", "prefetch", "background"} }

// rillMetrics are the counters the benchmark reads from rill-snapshotter.
type rillMetrics struct {
	fetched  map[string]int64 // compressed bytes fetched, by kind
	requests int64            // registry requests, all kinds
}

// scrape reads rill-snapshotter's Prometheus endpoint at addr.
func scrape(ctx context.Context, addr string) (*rillMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping rill-snapshotter's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping rill-snapshotter's metrics: %s", resp.Status)
	}
	m := &rillMetrics{fetched: map[string]int64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, value, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		switch name {
		case "rill_fs_fetched_bytes_total":
			m.fetched[labels["kind"]] += int64(value)
		case "rill_remote_requests_total":
			m.requests += int64(value)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading rill-snapshotter's metrics: %w", err)
	}
	return m, nil
}

// parseSample parses one line of the Prometheus text format: name{k="v",...} value.
func parseSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	if line == "" || strings.HasPrefix(line, "#") {
		return "", nil, 0, false
	}
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return "", nil, 0, false
	}
	series := strings.Join(fields[:len(fields)-1], " ")
	v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
	if err != nil {
		return "", nil, 0, false
	}
	labels = map[string]string{}
	name, rest, hasLabels := strings.Cut(series, "{")
	if hasLabels {
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			k, val, ok := strings.Cut(kv, "=")
			if ok {
				labels[strings.TrimSpace(k)] = strings.Trim(val, `"`)
			}
		}
	}
	return name, labels, v, true
}
