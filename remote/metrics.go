package remote

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Prometheus collectors of a Registry. Nothing is registered globally: the
// daemon registers Collectors() with its own registry.
type Metrics struct {
	requests   *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	retries    *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	fallbacks  *prometheus.CounterVec
	sharedRead prometheus.Counter
	inFlight   *prometheus.GaugeVec
	slotWait   *prometheus.HistogramVec
}

// NewMetrics returns a fresh, unregistered set of collectors.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rill", Subsystem: "remote", Name: "requests_total",
			Help: "HTTP requests to registries and blob storage, by host, operation and status code (\"error\" for transport failures).",
		}, []string{"host", "op", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rill", Subsystem: "remote", Name: "received_bytes_total",
			Help: "Blob and manifest bytes received and accepted, by host and operation.",
		}, []string{"host", "op"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rill", Subsystem: "remote", Name: "retries_total",
			Help: "Retried requests, by host, operation and reason (connection, 429, 5xx code, bad_response).",
		}, []string{"host", "op", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "rill", Subsystem: "remote", Name: "request_duration_seconds",
			Help:    "Time to response headers of registry requests, by host and operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"host", "op"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "rill", Subsystem: "remote", Name: "multirange_fallbacks_total",
			Help: "Hosts found not to serve multi-range requests, by host and how they answered.",
		}, []string{"host", "reason"}),
		sharedRead: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "rill", Subsystem: "remote", Name: "shared_ranges_total",
			Help: "Ranges served by joining an identical request already in flight.",
		}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "rill", Subsystem: "remote", Name: "requests_in_flight",
			Help: "Requests holding a slot of a host's scheduler (sent, body not yet closed), by host and priority (on_demand, prefetch, background).",
		}, []string{"host", "priority"}),
		slotWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "rill", Subsystem: "remote", Name: "slot_wait_seconds",
			Help:    "Time requests waited for a slot of a host's scheduler, by host and priority (requests that gave up waiting are not counted).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"host", "priority"}),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.bytes, m.retries, m.latency, m.fallbacks, m.sharedRead, m.inFlight, m.slotWait}
}
