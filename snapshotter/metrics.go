package snapshotter

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the snapshotter's collectors; the daemon registers them.
type Metrics struct {
	decisions     *prometheus.CounterVec
	restores      *prometheus.CounterVec
	verifications *prometheus.CounterVec
	// backgroundRetries counts background fetches that failed and resume after a backoff.
	backgroundRetries prometheus.Counter
	// unhealthyHosts is 1 for a registry host that failed a Prepare and is skipped.
	unhealthyHosts *prometheus.GaugeVec
}

// NewMetrics creates the collectors.
func NewMetrics() *Metrics {
	return &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_layer_decisions_total",
			Help: "Image layers prepared, by result (stream or fallback to a full pull) and reason.",
		}, []string{"result", "reason"}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_layer_restores_total",
			Help: "Streamed layers mounted again at start, by result (ok; degraded: mounted as unavailable, reads fail; recovered: a degraded layer served again once its TOC was fetched again).",
		}, []string{"result"}),
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_layer_verifications_total",
			Help: "Streamed layers made complete in the background and checked against the original layer, by result (ok, mismatch: an alarm).",
		}, []string{"result"}),
		backgroundRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_background_retries_total",
			Help: "Background fetches of streamed layers that failed (registry unreachable, corrupt responses, cache full) and resume after a backoff.",
		}),
		unhealthyHosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rill_registry_host_unhealthy",
			Help: "1 while a registry host that failed a Prepare (no answer within streaming.prepare_timeout, connection refused or reset) is skipped: its layers are pulled in full at once.",
		}, []string{"host"}),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.decisions, m.restores, m.verifications, m.backgroundRetries, m.unhealthyHosts}
}

func (m *Metrics) decision(result, reason string) { m.decisions.WithLabelValues(result, reason).Inc() }
