package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/credentials"
	"github.com/rillstream/rill/criproxy"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// credentialsDir is where the credentials captured from CRI pulls are kept, under root.
const credentialsDir = "credentials"

// credentialSources opens the store of CRI-captured credentials and builds the keychain of
// streamed layers' registry requests: CRI-captured, credential provider plugins, the Docker
// config, anonymous.
func credentialSources(ctx context.Context, cfg config.Config) (*credentials.Store, *credentials.Keychain, error) {
	store, err := credentials.OpenStore(ctx, filepath.Join(cfg.Root, credentialsDir))
	if err != nil {
		return nil, nil, err
	}
	sources := []credentials.Source{store}
	if p := cfg.Credentials.ProviderConfig; p != "" {
		providers, err := credentials.LoadProviders(ctx, p, cfg.Credentials.ProviderBinDir)
		if err != nil {
			return nil, nil, fmt.Errorf("credentials.provider_config: %w", err)
		}
		sources = append(sources, providers)
	}
	sources = append(sources, credentials.DockerConfig(cfg.Streaming.DockerConfig))
	return store, credentials.NewKeychain(sources...), nil
}

// serveCRI serves the CRI image-service proxy on its socket, forwarding to containerd's CRI
// and capturing pull credentials into store (nil: none captured). stop ends it.
func serveCRI(ctx context.Context, cfg config.Config, store *credentials.Store) (stop func(), _ error) {
	path := cfg.CRISocket()
	var sink criproxy.Sink
	if store != nil {
		sink = store
	}
	p, err := criproxy.New(cfg.Credentials.ContainerdAddress, sink)
	if err != nil {
		return nil, err
	}
	lis, err := listenUnix(ctx, path)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("credentials.cri_address: %w", err)
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			logrus.WithError(err).Error("CRI proxy stopped")
		}
	}()
	logrus.WithFields(logrus.Fields{"cri_address": path, "containerd": cfg.Credentials.ContainerdAddress}).Info("serving the CRI image service proxy")
	return func() {
		srv.Stop() // pulls in flight fail; kubelet retries them
		p.Close()
	}, nil
}
