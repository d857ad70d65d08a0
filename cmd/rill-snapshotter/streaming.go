package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/credentials"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// streamingOptions builds the snapshotter options of the streaming path from the config, and
// registers its metrics. ctx is the daemon's lifetime: blob readers live as long. closeCache
// closes the cache; call it after the snapshotter is closed.
//
// creds is the store of CRI-captured credentials (nil when streaming is off): the daemon prunes
// it once the snapshotter has restored its layers, and the CRI proxy fills it.
func streamingOptions(ctx context.Context, cfg config.Config, reg prometheus.Registerer) (_ []snapshotter.Option, creds *credentials.Store, closeCache func(), _ error) {
	c := cfg.Streaming
	snMetrics := snapshotter.NewMetrics()
	reg.MustRegister(snMetrics.Collectors()...)
	opts := []snapshotter.Option{snapshotter.WithMetrics(snMetrics)}
	closeCache = func() {}
	if !c.Enabled {
		logrus.Info("streaming is off: every layer is pulled in full")
		return opts, nil, closeCache, nil
	}
	creds, keychain, err := credentialSources(ctx, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	warnMissingDockerConfig(logrus.StandardLogger(), c.DockerConfig)
	remoteMetrics := remote.NewMetrics()
	reg.MustRegister(remoteMetrics.Collectors()...)
	registry, err := remote.New(
		remote.WithHostsDir(c.HostsDir),
		remote.WithKeychain(keychain),
		remote.WithMetrics(remoteMetrics),
		remote.WithUserAgent("rill-snapshotter/"+version),
	)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("streaming: registry access: %w", err)
	}
	resolver, err := snapshotter.NewRegistryResolver(ctx, registry, c.Platforms, c.Trust)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("streaming: %w", err)
	}
	store, err := cache.Open(ctx, filepath.Join(cfg.Root, "cache"), cache.WithBudget(cfg.Cache.MaxSizeBytes()))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("cache under %s: %w", filepath.Join(cfg.Root, "cache"), err)
	}
	reg.MustRegister(store.Metrics().Collectors()...)
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
		snapshotter.WithLayerObserver(creds),
		snapshotter.WithCache(store),
		snapshotter.WithBackgroundFetch(c.BackgroundFetch, c.BackgroundDelayDuration()),
		snapshotter.WithRecordWindow(c.RecordWindowDuration()),
		snapshotter.WithPrepareTimeout(c.PrepareTimeoutDuration(), c.UnhealthyForDuration()),
		snapshotter.WithBackgroundRetry(time.Second, c.BackgroundRetryMaxDuration()),
		snapshotter.WithFSOptions(rillfs.Limits{MaxTOCBytes: c.MaxTOCBytes}, rillfs.MountOptions{
			ReadTimeout:    c.ReadTimeoutDuration(),
			Metrics:        fsMetrics,
			NoPassthrough:  !c.Passthrough,
			BackgroundRate: backgroundLimiter(c.BackgroundRateBytes()),
			Buffer:         rillfs.NewChunkBuffer(memoryBuffer),
		}),
	), creds, closeCache, nil
}

// warnMissingDockerConfig warns when streaming.docker_config names a file that is not there:
// the registries are then asked without credentials, which a typo should not make silent.
func warnMissingDockerConfig(log *logrus.Logger, path string) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		log.WithError(err).WithField("docker_config", path).Warn("streaming.docker_config cannot be read: registries are asked without credentials (private images are pulled in full)")
	}
}

// memoryBuffer bounds the chunks kept in memory, for every layer together, while the cache
// cannot store them (its disk full, its budget held by mounted layers).
const memoryBuffer = 64 << 20

// backgroundLimiter is the one limiter of the background fetch of every layer; nil: no cap.
func backgroundLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(min(bytesPerSecond, 4<<20)))
}
