package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/config"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// streamingOptions builds the snapshotter options of the streaming path from the config, and
// registers its metrics. ctx is the daemon's lifetime: blob readers live as long. closeCache
// closes the cache; call it after the snapshotter is closed.
func streamingOptions(ctx context.Context, cfg config.Config, reg prometheus.Registerer) (_ []snapshotter.Opt, closeCache func(), _ error) {
	c := cfg.Streaming
	snMetrics := snapshotter.NewMetrics()
	reg.MustRegister(snMetrics.Collectors()...)
	opts := []snapshotter.Opt{snapshotter.WithMetrics(snMetrics)}
	closeCache = func() {}
	if !c.Enabled {
		logrus.Info("streaming is off: every layer is pulled in full")
		return opts, closeCache, nil
	}
	remoteMetrics := remote.NewMetrics()
	reg.MustRegister(remoteMetrics.Collectors()...)
	registry, err := remote.New(
		remote.WithHostsDir(c.HostsDir),
		remote.WithCredentials(remote.DockerConfig(c.DockerConfig)),
		remote.WithMetrics(remoteMetrics),
		remote.WithUserAgent("rill-snapshotter/"+version),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("streaming: registry access: %w", err)
	}
	resolver, err := snapshotter.NewRegistryResolver(ctx, registry, c.Platforms, c.Trust)
	if err != nil {
		return nil, nil, fmt.Errorf("streaming: %w", err)
	}
	store, err := cache.Open(ctx, filepath.Join(cfg.Root, "cache"), cache.WithBudget(cfg.Cache.MaxSizeBytes()))
	if err != nil {
		return nil, nil, fmt.Errorf("cache under %s: %w", filepath.Join(cfg.Root, "cache"), err)
	}
	reg.MustRegister(store.Metrics())
	closeCache = func() {
		if err := store.Close(); err != nil {
			logrus.WithError(err).Warn("closing the cache")
		}
	}
	fsMetrics := rillfs.NewMetrics()
	reg.MustRegister(fsMetrics.Collectors()...)
	logrus.WithFields(logrus.Fields{"platforms": c.Platforms, "trust": c.Trust, "cache_max_size": cfg.Cache.MaxSize}).Info("streaming is on")
	if pr := cfg.ProfileReports; pr.URL != "" {
		logrus.WithFields(logrus.Fields{"watcher": pr.URL, "node": pr.Node()}).Info("recorded prefetch profiles are reported to the fleet's watcher")
		opts = append(opts, snapshotter.WithProfileReports(&snapshotter.HTTPProfileSender{URL: pr.URL, TokenFile: pr.TokenFile}, pr.Node()))
	}
	return append(opts,
		snapshotter.WithResolver(resolver),
		snapshotter.WithCache(store),
		snapshotter.WithBackgroundFetch(c.BackgroundFetch, c.BackgroundDelayDuration()),
		snapshotter.WithRecordWindow(c.RecordWindowDuration()),
		snapshotter.WithFSOptions(rillfs.Limits{MaxTOCBytes: c.MaxTOCBytes}, rillfs.MountOptions{
			ReadTimeout:    c.ReadTimeoutDuration(),
			Metrics:        fsMetrics,
			NoPassthrough:  !c.Passthrough,
			BackgroundRate: backgroundLimiter(c.BackgroundRateBytes()),
		}),
	), closeCache, nil
}

// backgroundLimiter is the one limiter of the background fetch of every layer; nil: no cap.
func backgroundLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(min(bytesPerSecond, 4<<20)))
}
