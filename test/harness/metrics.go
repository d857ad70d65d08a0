package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MetricsAddress is the host:port of rill-snapshotter's Prometheus endpoint ("" when the
// harness did not turn it on: Options.MetricsAddress).
func (s *Snapshotter) MetricsAddress() string { return s.metricsAddress }

// Sample is one sample of a Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples are the samples of one scrape.
type Samples []Sample

// Sum returns the sum of the samples of the metric name whose labels include labels (nil:
// every sample); 0 when there is none.
func (ss Samples) Sum(name string, labels map[string]string) float64 {
	var sum float64
	for _, s := range ss {
		if s.Name != name {
			continue
		}
		match := true
		for k, want := range labels {
			if s.Labels[k] != want {
				match = false
			}
		}
		if match {
			sum += s.Value
		}
	}
	return sum
}

// Metric scrapes rill-snapshotter's Prometheus endpoint and returns the sum of the samples of
// the metric name whose labels include labels (nil: every sample). A metric without samples
// is 0.
func (s *Snapshotter) Metric(ctx context.Context, name string, labels map[string]string) (float64, error) {
	samples, err := s.Scrape(ctx)
	if err != nil {
		return 0, err
	}
	return samples.Sum(name, labels), nil
}

// Scrape reads every sample of rill-snapshotter's Prometheus endpoint.
func (s *Snapshotter) Scrape(ctx context.Context) (Samples, error) {
	if s.metricsAddress == "" {
		return nil, errors.New("rill-snapshotter's metrics endpoint is off (harness.Options.MetricsAddress)")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.metricsAddress+"/metrics", nil)
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
	var samples Samples
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if n, l, v, ok := parseSample(sc.Text()); ok {
			samples = append(samples, Sample{Name: n, Labels: l, Value: v})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading rill-snapshotter's metrics: %w", err)
	}
	return samples, nil
}

// parseSample parses one sample line of the Prometheus text format: name{k="v",...} value.
// Label values with commas or escaped quotes are not needed here and not handled.
func parseSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	if line == "" || strings.HasPrefix(line, "#") {
		return "", nil, 0, false
	}
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
	if err != nil {
		return "", nil, 0, false
	}
	series := strings.Join(fields[:len(fields)-1], " ")
	labels = map[string]string{}
	name, rest, hasLabels := strings.Cut(series, "{")
	if hasLabels {
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			if k, val, ok := strings.Cut(kv, "="); ok {
				labels[strings.TrimSpace(k)] = strings.Trim(val, `"`)
			}
		}
	}
	return name, labels, v, true
}
