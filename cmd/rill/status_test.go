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
	"github.com/rillstream/rill/snapshotter"
)

// serveLayers serves layers on a unix socket as rill-snapshotter's status API does.
func serveLayers(t *testing.T, layers []snapshotter.LayerStatus) string {
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
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusCommand(t *testing.T) {
	layers := []snapshotter.LayerStatus{
		{Snapshot: "7", Ref: "reg/app@sha256:aa", Blob: digest.FromString("a"), Reason: "bound-artifact", Mounted: time.Now().Add(-time.Minute),
			Bytes: 100 << 20, LocalBytes: 5 << 20, PrefetchDone: true, Background: "running"},
		{Snapshot: "8", Ref: "reg/app@sha256:bb", Blob: digest.FromString("b"), Reason: "estargz", Mounted: time.Now(),
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
	var got []snapshotter.LayerStatus
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || len(got) != 2 || got[1].Background != "mismatch" {
		t.Fatalf("--json: %v %+v", err, got)
	}

	errOut.Reset()
	if code := run(context.Background(), []string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "is it running") {
		t.Fatalf("no daemon: exit %d, %q", code, errOut.String())
	}
}
