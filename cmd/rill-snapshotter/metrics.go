package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// grpcMetrics counts the snapshots API calls and their latencies, and logs each call at debug.
type grpcMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newGRPCMetrics(reg prometheus.Registerer, version string) *grpcMetrics {
	m := &grpcMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rill_grpc_requests_total",
			Help: "Snapshots API calls handled, by method and gRPC status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rill_grpc_request_duration_seconds",
			Help:    "Latency of snapshots API calls, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rill_build_info",
		Help: "Always 1; the version label says which rill-snapshotter runs.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.requests, m.duration, build)
	return m
}

func (m *grpcMetrics) observe(method string, start time.Time, err error) {
	code := status.Code(err)
	elapsed := time.Since(start)
	m.requests.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method).Observe(elapsed.Seconds())
	entry := logrus.WithFields(logrus.Fields{"method": method, "code": code.String(), "duration": elapsed})
	if err != nil {
		entry = entry.WithError(err)
	}
	entry.Debug("snapshots call")
}

func (m *grpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *grpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}
