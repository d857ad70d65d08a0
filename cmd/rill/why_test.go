package main

import (
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

// serveDecisions serves ds on a unix socket as rill-snapshotter's status API does.
func serveDecisions(t *testing.T, ds []status.Decision) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "status.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/decisions" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(ds)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestWhy(t *testing.T) {
	now := time.Now().UTC()
	l1, l2, l3 := digest.FromString("1"), digest.FromString("2"), digest.FromString("3")
	sock := serveDecisions(t, []status.Decision{
		{Time: now.Add(-time.Minute), ImageRef: "reg.example/team/app:v1", Layer: l1, Result: "stream", Reason: "bound-artifact"},
		{Time: now.Add(-time.Minute), ImageRef: "reg.example/team/app:v1", Layer: l2, Result: "stream", Reason: "bound-artifact"},
		{Time: now, ImageRef: "docker.io/library/debian:12", Layer: l3, Result: "fallback", Reason: "no-bound-artifact", Error: "not streamable: no-bound-artifact"},
	})
	code, out, errOut := rill(t, "why", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[1], "docker.io/library/debian:12") || !strings.Contains(lines[1], "full: no-bound-artifact ×1") {
		t.Errorf("the latest image first, with its reason:\n%s", out)
	}
	if !strings.HasPrefix(lines[2], "reg.example/team/app:v1") || !strings.Contains(lines[2], "bound-artifact ×2") {
		t.Errorf("streamed image:\n%s", out)
	}

	// One image, named as the user would: its layers and what to do.
	code, out, errOut = rill(t, "why", "--socket", sock, "debian:12")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{l3.Encoded()[:12], "pulled in full", "no-bound-artifact: rill create docker.io/library/debian:12"} {
		if !strings.Contains(out, want) {
			t.Errorf("rill why debian:12 lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, l1.Encoded()[:12]) {
		t.Errorf("another image's layer listed:\n%s", out)
	}
	code, out, _ = rill(t, "why", "--socket", sock, "--json", "reg.example/team/app:v1")
	var got []status.Decision
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || len(got) != 2 || got[0].Reason != "bound-artifact" || got[0].Layer != l1 {
		t.Errorf("--json: exit %d, %v, %+v", code, err, got)
	}
	code, out, _ = rill(t, "why", "--socket", sock, "other/image:v1")
	if code != 0 || !strings.Contains(out, "no recent decisions for other/image:v1") {
		t.Errorf("unknown image: exit %d: %s", code, out)
	}
	code, _, errOut = rill(t, "why", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code == 0 || !strings.Contains(errOut, "is it running") {
		t.Errorf("no daemon: exit %d, %s", code, errOut)
	}
}
