package fs

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collectors of streamed layers; the daemon registers them.
type Metrics struct {
	fetchedBytes         prometheus.Counter
	verificationFailures prometheus.Counter
	readErrors           prometheus.Counter
}

// NewMetrics creates the collectors.
func NewMetrics() *Metrics {
	return &Metrics{
		fetchedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_fs_fetched_bytes_total",
			Help: "Compressed bytes of layer blobs fetched to serve reads.",
		}),
		verificationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_fs_chunk_verification_failures_total",
			Help: "Chunks whose bytes did not match their digest in the TOC (never served).",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_fs_read_errors_total",
			Help: "Reads answered with EIO.",
		}),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.fetchedBytes, m.verificationFailures, m.readErrors}
}
