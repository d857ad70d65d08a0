package cache

import "github.com/prometheus/client_golang/prometheus"

// Write error reasons, the values of the "reason" label of rill_cache_write_errors_total.
const (
	reasonNoSpace = "no_space" // the disk (or quota) is full
	reasonBudget  = "budget"   // over budget and nothing could be evicted: pinned (mounted) layers and open files hold it
	reasonIO      = "io"       // any other I/O error
)

// Metrics are the cache's Prometheus collectors. A Store creates its own; the daemon registers
// them with reg.MustRegister(store.Metrics().Collectors()...) (Metrics is also a Collector
// itself). Nothing is registered globally.
type Metrics struct {
	BytesStored   prometheus.Gauge       // bytes the cache occupies on disk
	HitBytes      prometheus.Counter     // bytes served by ReadAt
	MissBytes     prometheus.Counter     // bytes asked of ReadAt and not cached
	Evictions     prometheus.Counter     // files evicted to stay within the budget
	EvictedBytes  prometheus.Counter     // bytes freed by those evictions
	WriteErrors   *prometheus.CounterVec // failed writes, by reason
	CheckFailures prometheus.Counter     // ranges dropped because their bytes no longer matched their record
	DiskFull      prometheus.Gauge       // 1 while writes meet a full disk
}

func newMetrics() *Metrics {
	m := &Metrics{
		BytesStored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rill_cache_bytes",
			Help: "Bytes of layer file data the cache holds on disk.",
		}),
		HitBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_cache_hit_bytes_total",
			Help: "Bytes read from the cache.",
		}),
		MissBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_cache_miss_bytes_total",
			Help: "Bytes asked of the cache that it did not hold.",
		}),
		Evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_cache_evictions_total",
			Help: "Files evicted from the cache to stay within its size budget.",
		}),
		EvictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_cache_evicted_bytes_total",
			Help: "Bytes freed by evictions.",
		}),
		WriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_cache_write_errors_total",
			Help: "Writes to the cache that failed, by reason: no_space (the disk is full), budget (the budget is held by mounted layers and open files, never evicted), io.",
		}, []string{"reason"}),
		CheckFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_cache_check_failures_total",
			Help: "Cached ranges dropped after a restart because their bytes did not match their journal record.",
		}),
	}
	m.DiskFull = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rill_cache_disk_full",
		Help: "1 while writes to the cache meet a full disk (or quota): streamed data is then not kept on disk.",
	})
	for _, r := range []string{reasonNoSpace, reasonBudget, reasonIO} {
		m.WriteErrors.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.Collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.Collectors() {
		c.Collect(ch)
	}
}

// Collectors returns the collectors to register, as the other packages' Metrics do.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.BytesStored, m.HitBytes, m.MissBytes, m.Evictions, m.EvictedBytes, m.WriteErrors, m.CheckFailures, m.DiskFull}
}

var _ prometheus.Collector = (*Metrics)(nil)
