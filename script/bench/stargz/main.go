// Command stargz-grpc is stargz-snapshotter's daemon (containerd-stargz-grpc) as the benchmark
// builds it: a containerd proxy snapshotter serving the snapshots gRPC API on a unix socket,
// made from stargz-snapshotter's library packages (its service and snapshot packages), because
// the module proxy does not serve the module of its cmd/ directory.
//
// It is minimal on purpose: stargz-snapshotter's default configuration (or a TOML file in its
// format, with -config), anonymous registry access (localhost registries over plain HTTP, as
// upstream), no credential helpers, no FUSE manager, no metrics endpoint. That is all the
// benchmark needs to measure stargz-snapshotter's lazy pulling beside rill's on the same link.
//
//	stargz-grpc -root DIR -address SOCKET [-config FILE] [-log-level info]
//
// It lives in its own Go module so that rill's go.mod does not gain stargz-snapshotter's
// dependencies; script/bench builds it with `go build` when a stargz mode runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/rill-bench-stargz/stargz.sock", "unix socket of the snapshots gRPC service")
	root := flag.String("root", "/var/lib/rill-bench-stargz", "state directory (snapshots, caches)")
	configPath := flag.String("config", "", "stargz-snapshotter's config.toml (default: its defaults)")
	logLevel := flag.String("log-level", "info", "log level: trace, debug, info, warn, error")
	showVersion := flag.Bool("version", false, "print stargz-snapshotter's library version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("stargz-grpc (rill bench) stargz-snapshotter %s\n", libraryVersion())
		return
	}
	if err := log.SetLevel(*logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "stargz-grpc: -log-level: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *address, *root, *configPath); err != nil {
		log.G(ctx).WithError(err).Error("stargz-grpc failed")
		os.Exit(1)
	}
}

// serve runs the snapshotter on address until ctx ends.
func serve(ctx context.Context, address, root, configPath string) error {
	var cfg service.Config
	if configPath != "" {
		data, err := os.ReadFile(configPath)
		if err != nil {
			return err
		}
		if err := toml.Unmarshal(data, &cfg); err != nil {
			return fmt.Errorf("parsing %s: %w", configPath, err)
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("overlayfs is not usable under %s: %w", root, err)
	}
	sn, err := service.NewStargzSnapshotterService(ctx, root, &cfg)
	if err != nil {
		return fmt.Errorf("starting the snapshotter: %w", err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the snapshotter")
		}
	}()

	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.G(ctx).WithField("address", address).WithField("root", root).
		Infof("stargz-snapshotter %s serving", libraryVersion())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		log.G(ctx).Info("stopping")
		srv.Stop()
		return nil
	}
}

// libraryVersion is the stargz-snapshotter module version this binary was built with.
func libraryVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/containerd/stargz-snapshotter" {
				return m.Version
			}
		}
	}
	return "(unknown version)"
}
