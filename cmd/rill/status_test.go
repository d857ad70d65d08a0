package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/snapshotter/status"
)

// serveLayers serves layers on a unix socket as rill-snapshotter's status API does.
func serveLayers(t *testing.T, layers []status.Layer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "status.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/layers" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(layers)
	})}
	return serveStatus(t, sock, lis, srv)
}

// serveNode serves layers and the node's state as rill-snapshotter's status API does.
func serveNode(t *testing.T, layers []status.Layer, node status.Node) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "status.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/layers", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(layers) })
	mux.HandleFunc("/v1/node", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(node) })
	return serveStatus(t, sock, lis, &http.Server{Handler: mux})
}

func serveStatus(t *testing.T, sock string, lis net.Listener, srv *http.Server) string {
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusCommand(t *testing.T) {
	layers := []status.Layer{
		{Snapshot: "7", Image: "reg/app:v1", Ref: "reg/app@sha256:aa", Blob: digest.FromString("a"), Reason: "bound-artifact", Mounted: time.Now().Add(-time.Minute),
			Bytes: 100 << 20, LocalBytes: 5 << 20, PrefetchDone: true, Background: "running"},
		{Snapshot: "8", Image: "reg/app:v2", Ref: "reg/app@sha256:bb", Blob: digest.FromString("b"), Reason: "estargz", Mounted: time.Now(),
			Bytes: 10 << 20, LocalBytes: 10 << 20, PrefetchDone: true, Background: "mismatch", LastError: "layer does not match the original"},
	}
	sock := serveLayers(t, layers)
	var out, errOut bytes.Buffer

	if code := run(context.Background(), []string{"status", "--socket", sock}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"bound-artifact", "5MiB/100MiB", "running", "mismatch", "layer does not match the original"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"status", "--socket", sock, "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("--json: exit %d", code)
	}
	var got []status.Layer
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || len(got) != 2 || got[1].Background != "mismatch" {
		t.Fatalf("--json: %v %+v", err, got)
	}

	errOut.Reset()
	if code := run(context.Background(), []string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "is it running") {
		t.Fatalf("no daemon: exit %d, %q", code, errOut.String())
	}
}

// The table names the image pulled (not the blob's repository@digest), the reason after a
// restart, and a background fetch waiting to resume after failures with its retries and error.
func TestStatusShowsImageRetriesAndError(t *testing.T) {
	layers := []status.Layer{
		{Snapshot: "7", Image: "reg/app:v1", Ref: "reg/app@sha256:aa", Blob: digest.FromString("a"), Reason: "bound-artifact", Mounted: time.Now(),
			Bytes: 100 << 20, LocalBytes: 53 << 20, CacheBytes: 104 << 20, PrefetchDone: true, Background: "incomplete", Retries: 4,
			NextRetry: time.Now().Add(8 * time.Second), LastError: "background fetch of blob range [0, 1048576): connection refused"},
	}
	sock := serveNode(t, layers, status.Node{
		CacheDiskFullSince: time.Now().Add(-time.Minute),
		UnhealthyHosts:     []status.Host{{Host: "reg.example:5000", Since: time.Now(), Until: time.Now().Add(time.Minute), LastError: "no answer within the prepare timeout"}},
	})
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"status", "--socket", sock}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"CACHE DISK FULL", "REGISTRY HOST UNHEALTHY reg.example:5000", "prepare timeout", "IMAGE", "reg/app:v1", "bound-artifact", "53MiB/100MiB", "incomplete (4 retries, next in", "connection refused"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "reg/app@sha256:aa") {
		t.Errorf("table shows the blob reference:\n%s", out.String())
	}
}
