package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rillstream/rill/snapshotter"
	"github.com/rillstream/rill/snapshotter/status"
	"github.com/sirupsen/logrus"
)

// serveStatus serves the state of the streamed layers on a unix socket (0600, root only):
// the JSON of package snapshotter/status: the layers, the node's state (unhealthy registry
// hosts, a full cache disk) for `rill status`, and the recent stream-or-full-pull decisions
// for `rill why`.
func serveStatus(ctx context.Context, path string, sn *snapshotter.Snapshotter) (*http.Server, error) {
	lis, err := listenUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("status_address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+status.PathLayers, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(sn.Status()); err != nil {
			logrus.WithError(err).Debug("status response")
		}
	})
	mux.HandleFunc("GET "+status.PathNode, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(sn.Node()); err != nil {
			logrus.WithError(err).Debug("status response")
		}
	})
	mux.HandleFunc("GET "+status.PathDecisions, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(sn.Decisions()); err != nil {
			logrus.WithError(err).Debug("decisions response")
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logrus.WithError(err).Error("status server stopped")
		}
	}()
	return srv, nil
}
