package main

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rillstream/rill/config"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter"
	"github.com/sirupsen/logrus"
)

// streamingOptions builds the snapshotter options of the streaming path from the config, and
// registers its metrics. ctx is the daemon's lifetime: blob readers live as long.
func streamingOptions(ctx context.Context, c config.Streaming, reg prometheus.Registerer) ([]snapshotter.Opt, error) {
	snMetrics := snapshotter.NewMetrics()
	reg.MustRegister(snMetrics.Collectors()...)
	opts := []snapshotter.Opt{snapshotter.WithMetrics(snMetrics)}
	if !c.Enabled {
		logrus.Info("streaming is off: every layer is pulled in full")
		return opts, nil
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
		return nil, fmt.Errorf("streaming: registry access: %w", err)
	}
	resolver, err := snapshotter.NewRegistryResolver(ctx, registry, c.Platforms, c.Trust)
	if err != nil {
		return nil, fmt.Errorf("streaming: %w", err)
	}
	fsMetrics := rillfs.NewMetrics()
	reg.MustRegister(fsMetrics.Collectors()...)
	logrus.WithFields(logrus.Fields{"platforms": c.Platforms, "trust": c.Trust}).Info("streaming is on")
	return append(opts,
		snapshotter.WithResolver(resolver),
		snapshotter.WithFSOptions(rillfs.Limits{MaxTOCBytes: c.MaxTOCBytes}, rillfs.MountOptions{
			ReadTimeout: c.ReadTimeoutDuration(),
			Metrics:     fsMetrics,
		}),
	), nil
}
