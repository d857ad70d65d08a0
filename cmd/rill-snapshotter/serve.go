package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/fdstore"
	"github.com/rillstream/rill/snapshotter"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// gracePeriod bounds how long shutdown waits for in-flight calls before cutting them off.
const gracePeriod = 30 * time.Second

// serve runs the daemon until ctx is cancelled (a signal), then shuts down in order: stop
// accepting, finish in-flight calls, close the metadata store.
func serve(ctx context.Context, cfg config.Config) error {
	log := logrus.WithFields(logrus.Fields{"root": cfg.Root, "address": cfg.Address})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return fmt.Errorf("root: %w", err)
	}
	// Before anything under root is opened: a second daemon on the same root stops here, at
	// once, instead of waiting on the metadata store's lock or mounting what the first serves.
	unlock, err := lockRoot(cfg.Root)
	if err != nil {
		return err
	}
	defer unlock()
	// A socket in use stops the start before any state is opened (restoring streamed layers
	// mounts them); listenUnix checks again when it listens.
	if _, err := checkSocket(ctx, cfg.Address); err != nil {
		return err
	}
	if sa := cfg.StatusSocket(); sa != "" {
		if _, err := checkSocket(ctx, sa); err != nil {
			return fmt.Errorf("status_address: %w", err)
		}
	}
	if sa := cfg.CRISocket(); sa != "" {
		if _, err := checkSocket(ctx, sa); err != nil {
			return fmt.Errorf("credentials.cri_address: %w", err)
		}
	}
	opts, creds, closeCache, err := streamingOptions(ctx, cfg, reg)
	if err != nil {
		return err
	}
	defer closeCache()
	if cfg.Streaming.Enabled {
		closeStore, fdOpt := openFDStore(ctx, cfg, log)
		defer closeStore()
		opts = append(opts, fdOpt)
	}
	sn, err := snapshotter.NewSnapshotter(ctx, cfg.Root, append(opts,
		snapshotter.WithAsyncRemove(cfg.Snapshotter.AsyncRemove),
		snapshotter.WithMountOptions(cfg.Snapshotter.MountOptions),
	)...)
	if err != nil {
		return err
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.WithError(err).Error("closing the snapshotter")
		}
	}()
	if creds != nil {
		creds.Prune(ctx) // the layers of the last run are restored: drop what none of them uses
	}
	// Directories left by a crash between Remove and Cleanup go now, not at the next GC.
	if err := sn.Cleanup(ctx); err != nil {
		log.WithError(err).Warn("startup cleanup incomplete")
	}

	m := newGRPCMetrics(reg, version)

	lis, err := listenUnix(ctx, cfg.Address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(m.unary),
		grpc.ChainStreamInterceptor(m.stream),
	)
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	var metricsSrv *http.Server
	if cfg.Metrics.Address != "" {
		metricsSrv, err = serveMetrics(cfg.Metrics.Address, reg)
		if err != nil {
			lis.Close()
			return err
		}
		log.WithField("metrics", cfg.Metrics.Address).Info("serving metrics")
	}

	var statusSrv *http.Server
	if sa := cfg.StatusSocket(); sa != "" {
		if statusSrv, err = serveStatus(ctx, sa, sn); err != nil {
			lis.Close()
			return err
		}
	}

	if cfg.CRISocket() != "" {
		stopCRI, err := serveCRI(ctx, cfg, creds)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopCRI()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.WithField("version", version).Info("rill-snapshotter ready")
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.WithError(err).Warn("cannot notify systemd")
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight calls")
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(gracePeriod):
		log.WithField("grace", gracePeriod).Warn("in-flight calls did not finish in time; cutting them off")
		srv.Stop()
		<-stopped
	}
	if statusSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := statusSrv.Shutdown(shutdownCtx); err != nil {
			log.WithError(err).Warn("status server shutdown")
		}
	}
	if metricsSrv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := metricsSrv.Shutdown(shutdownCtx); err != nil {
			log.WithError(err).Warn("metrics server shutdown")
		}
	}
	log.Info("rill-snapshotter stopped")
	return nil
}

func serveMetrics(addr string, reg *prometheus.Registry) (*http.Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logrus.WithError(err).Error("metrics server stopped")
		}
	}()
	return srv, nil
}

// openFDStore opens where the FUSE connections of streamed layers are kept across restarts
// (systemd's fd store, or the fd-holder) and returns what the previous process kept. A store
// that cannot be opened is logged, not fatal: layers are then served as before, and containers
// using them lose their files when the daemon restarts.
func openFDStore(ctx context.Context, cfg config.Config, log *logrus.Entry) (func(), snapshotter.Option) {
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	store, kept, err := fdstore.Open(octx, fdstore.Options{
		Mode:         fdstore.Mode(cfg.FDStore.Mode),
		HolderSocket: cfg.FDStore.HolderSocket,
		Log:          log,
	})
	if err != nil {
		log.WithError(err).Error("cannot keep FUSE connections outside rill-snapshotter (fdstore): running containers lose their streamed files at its next restart; see README, Troubleshooting")
		return func() {}, snapshotter.WithFDStore(nil, nil)
	}
	log.WithFields(logrus.Fields{"fdstore": store.Kind(), "kept": len(kept)}).Info("FUSE connections are kept across restarts")
	return func() { store.Close() }, snapshotter.WithFDStore(store, kept)
}
