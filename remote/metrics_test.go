package remote

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

func TestMetricsCountRequestsBytesAndRetries(t *testing.T) {
	m := NewMetrics()
	pr := prometheus.NewRegistry()
	pr.MustRegister(m.Collectors()...)
	// A second set registers beside the first in another registry: nothing is global.
	prometheus.NewRegistry().MustRegister(NewMetrics().Collectors()...)

	f := newBlobFixture(t, regtest.InProcess(t, true), WithMetrics(m))
	f.proxy.Add(faultproxy.Fault{Kind: faultproxy.Status, Code: 503, Times: 1})
	if err := f.check(t, f.reader(t), Range{0, 1000}); err != nil {
		t.Fatal(err)
	}
	families, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := map[string]float64{}
	for _, fam := range families {
		for _, mt := range fam.GetMetric() {
			sum[fam.GetName()] += mt.GetCounter().GetValue() + float64(mt.GetHistogram().GetSampleCount())
		}
	}
	for name, want := range map[string]float64{
		"rill_remote_requests_total":           2,
		"rill_remote_received_bytes_total":     1000,
		"rill_remote_retries_total":            1,
		"rill_remote_request_duration_seconds": 2,
	} {
		if sum[name] != want {
			t.Errorf("%s = %v, want %v", name, sum[name], want)
		}
	}
}
