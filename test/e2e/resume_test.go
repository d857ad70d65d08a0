package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/rillstream/rill/snapshotter"
	"github.com/rillstream/rill/test/harness"
)

// statusLayers reads the streamed layers from rill's status socket.
func statusLayers(t *testing.T, env *harness.Env) []snapshotter.LayerStatus {
	t.Helper()
	sock := filepath.Join(filepath.Dir(env.Snapshotter.Socket()), "status.sock")
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://rill/v1/layers")
	if err != nil {
		t.Fatalf("rill's status socket: %v", err)
	}
	defer resp.Body.Close()
	var layers []snapshotter.LayerStatus
	if err := json.NewDecoder(resp.Body).Decode(&layers); err != nil {
		t.Fatal(err)
	}
	return layers
}

// waitStatus polls rill's status until cond holds for the layers, or fails after d.
func waitStatus(t *testing.T, env *harness.Env, d time.Duration, what string, cond func([]snapshotter.LayerStatus) bool) []snapshotter.LayerStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		layers := statusLayers(t, env)
		if cond(layers) {
			return layers
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s; status: %+v", d, what, layers)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testBackgroundResumes takes the registry down while the background fetch makes a streamed
// image's layers local: the fetch fails, is retried (rill status says so), and resumes once
// the registry is back, until every layer is complete and verified — without a restart.
func testBackgroundResumes(t *testing.T, env *harness.Env, img pushedImage) {
	ctx := t.Context()
	restartWithStreaming(t, env, "background_fetch = true", `background_delay = "0s"`, `background_rate = "8MB"`, `background_retry_max = "1s"`)
	if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
		t.Fatalf("crictl pull %s: %v", img.Ref, err)
	}
	assertLayersRemote(t, env, img, true)
	waitStatus(t, env, 2*time.Minute, "the background fetch under way", func(ls []snapshotter.LayerStatus) bool {
		for _, l := range ls {
			if l.Background == "running" && l.LocalBytes > 0 && l.LocalBytes < l.Bytes {
				return true
			}
		}
		return false
	})
	env.Proxy.SetOutage(true)
	down := waitStatus(t, env, 2*time.Minute, "a layer incomplete and retried while the registry is down", func(ls []snapshotter.LayerStatus) bool {
		for _, l := range ls {
			if l.Background == "incomplete" && l.Retries > 0 && l.LastError != "" {
				return true
			}
		}
		return false
	})
	t.Logf("registry down: %+v", down)
	env.Proxy.SetOutage(false)
	done := waitStatus(t, env, 5*time.Minute, "every layer complete after the registry came back", func(ls []snapshotter.LayerStatus) bool {
		for _, l := range ls {
			if l.Background != "complete" && l.Background != "verified" {
				return false
			}
		}
		return len(ls) >= len(img.ChainIDs)
	})
	for _, l := range done {
		if l.LocalBytes != l.Bytes {
			t.Errorf("layer %s complete with %d of %d bytes local", l.Blob, l.LocalBytes, l.Bytes)
		}
	}
	if n := metric(t, env, "rill_background_retries_total", nil); n == 0 {
		t.Error("rill_background_retries_total is 0 after an outage during the background fetch")
	}
	if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
		t.Fatal(err)
	}
	assertSnapshotsGone(t, env, img)
}
