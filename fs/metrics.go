package fs

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collectors of streamed layers; the daemon registers them.
type Metrics struct {
	// fetchedBytes counts compressed bytes read from layer blobs, by why they were fetched:
	// on_demand when a FUSE read needed them (prefetch and background fetch come later).
	fetchedBytes *prometheus.CounterVec
	// readBytes counts the bytes FUSE reads returned, by where they came from: the cache (a
	// hit), or a chunk fetched from the blob and verified (a miss, or a handle without cache).
	readBytes *prometheus.CounterVec
	// cacheErrors counts cache operations that failed; the read was served all the same.
	cacheErrors          *prometheus.CounterVec
	verificationFailures prometheus.Counter
	readErrors           prometheus.Counter

	// Children of the vectors above, resolved once.
	fetchedOnDemand   prometheus.Counter
	fetchedPrefetch   prometheus.Counter
	passthroughOpens  prometheus.Counter
	fetchedBackground prometheus.Counter
	readDuration      *prometheus.HistogramVec
	layerMismatches   prometheus.Counter
	// backgroundPreemptions counts background transfers ended for a read.
	backgroundPreemptions prometheus.Counter
	hitBytes              prometheus.Counter
	bufferHitBytes        prometheus.Counter // served from the memory buffer (ChunkBuffer)
	missBytes             prometheus.Counter
	cacheOpenErrors       prometheus.Counter
	cacheWriteErrors      prometheus.Counter
}

// NewMetrics creates the collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		fetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_fs_fetched_bytes_total",
			Help: "Compressed bytes of layer blobs fetched, by kind (on_demand: to serve reads; prefetch: the image's start-up files, in the background).",
		}, []string{"kind"}),
		readBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_fs_read_bytes_total",
			Help: "Bytes returned to FUSE reads, by source: cache (a cache hit) or network (a chunk fetched from the blob and verified: a cache miss, or a file read without a cache), or memory (a chunk the full cache could not store, kept in memory).",
		}, []string{"source"}),
		cacheErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_fs_cache_errors_total",
			Help: "Cache operations that failed, by operation (open: a file handle without cache; write: a verified chunk not stored). Reads are served from the network all the same.",
		}, []string{"op"}),
		verificationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_fs_chunk_verification_failures_total",
			Help: "Chunks whose bytes did not match their digest in the TOC (never served).",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rill_fs_read_errors_total",
			Help: "Reads answered with EIO.",
		}),
	}
	m.fetchedOnDemand = m.fetchedBytes.WithLabelValues("on_demand")
	m.fetchedPrefetch = m.fetchedBytes.WithLabelValues("prefetch")
	m.fetchedBackground = m.fetchedBytes.WithLabelValues("background")
	m.readDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rill_fs_read_duration_seconds",
		Help:    "Latency of FUSE reads of streamed files, by source: cache (all bytes local) or network (some fetched).",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2, 20),
	}, []string{"source"})
	m.layerMismatches = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rill_fs_layer_mismatches_total",
		Help: "Streamed layers that, once complete, did not decompress to the original layer's bytes (an alarm).",
	})
	m.backgroundPreemptions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rill_fs_background_preemptions_total",
		Help: "Background transfers ended because a read started fetching from the same layer (the range is fetched again once reads are done).",
	})
	m.passthroughOpens = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rill_fs_passthrough_opens_total",
		Help: "Opens of files complete in the cache handed to the kernel (FUSE passthrough): their reads never reach rill.",
	})
	m.hitBytes = m.readBytes.WithLabelValues("cache")
	m.missBytes = m.readBytes.WithLabelValues("network")
	m.bufferHitBytes = m.readBytes.WithLabelValues("memory")
	m.cacheOpenErrors = m.cacheErrors.WithLabelValues("open")
	m.cacheWriteErrors = m.cacheErrors.WithLabelValues("write")
	return m
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.fetchedBytes, m.readBytes, m.cacheErrors, m.verificationFailures, m.readErrors, m.passthroughOpens, m.layerMismatches, m.readDuration, m.backgroundPreemptions}
}
