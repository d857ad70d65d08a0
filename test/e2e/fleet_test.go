package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// The fleet learns an image's start by itself: node A cold-starts an image whose artifact has
// no profile, records what the container opens and reports it to rill watch; the watcher gives
// the tag's artifact that profile (an operation, layers not converted again); node B then
// cold-starts the same tag and prefetches the profile's files at mount, as its metrics show.
// The two nodes share the registry and run one after the other (containerd's shim directory
// /run/containerd/s is machine-wide), each with a root of its own.
func TestFleetProfile(t *testing.T) {
	ctx := t.Context()
	cli := newRillCLI(t)
	dir := t.TempDir()
	reg, err := harness.StartRegistry(ctx, filepath.Join(dir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := reg.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	deb, err := images.Debian(ctx, images.DefaultCacheDir, t.Logf)
	if err != nil {
		t.Fatalf("building the debian image: %v", err)
	}
	deb.Repository = "rill/fleet:bookworm"
	pushed, err := deb.Push(ctx, reg.Host())
	if err != nil {
		t.Fatal(err)
	}
	img := pushedImage{deb, pushed}
	cli.must(append([]string{"create", pushed.Ref}, cli.registryArgs()...)...)
	first := cli.show(t, pushed.Ref)
	if !boundArtifact(first) || first.Manifests[0].Artifacts[0].ProfileEntries != 0 {
		t.Fatalf("after rill create: %+v", first)
	}

	// The watcher takes profiles; one report is enough two seconds after it arrived.
	listen, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "profile-token")
	if err := os.WriteFile(token, []byte("fleet-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := &watcher{cli: cli, log: filepath.Join(dir, "watch.log"), api: "unix://" + filepath.Join(dir, "watch.sock"), registry: reg.Host(), listen: listen}
	w.args = append([]string{"watch", "--registry", reg.Host(), "--listen", listen, "--api", w.api, "--state-dir", filepath.Join(dir, "watch"),
		"--reconcile-interval", "0", "--profile-token-file", token, "--profile-min-reports", "2", "--profile-delay", "2s"}, cli.registryArgs()...)
	w.start(t)
	t.Cleanup(func() { w.kill(t, 15) })

	files := []string{"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0", "/etc/debian_version"}
	command := append([]string{"/bin/cat"}, files...)
	var want strings.Builder
	for _, p := range files {
		want.WriteString(fileInLayers(t, img.TestImage, p))
	}
	reports := fmt.Sprintf("[profile_reports]\nurl = %q\ntoken_file = %q\nnode_name = %%q\n", "http://"+listen, token)

	// Node A: a cold start without a profile, recorded (the harness's record window is 5 s)
	// and reported.
	a := startNode(t, reg, fmt.Sprintf(reports, "node-a"))
	if _, err := a.CRI.Pull(ctx, pushed.Ref); err != nil {
		t.Fatalf("node A: crictl pull: %v", err)
	}
	res, err := a.CRI.RunInPod(ctx, "fleet-a", pushed.Ref, command, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != want.String() {
		t.Fatalf("node A's run: exit %d, %d bytes (want %d), stderr %q", res.ExitCode, len(res.Stdout), want.Len(), res.Stderr)
	}
	if n := prefetched(t, a); n != 0 {
		t.Errorf("node A prefetched %d bytes of an artifact without a profile", n)
	}
	op := w.waitOperation(t, pushed.Ref, "learnt from node A's report", func(op operation.Operation) bool {
		return op.Trigger == "fleet profile" && op.State.Final()
	})
	if op.State != operation.Succeeded {
		t.Fatalf("the fleet profile's operation: %+v\nwatcher log:\n%s", op, tail(readFile(w.log), 40))
	}
	if !strings.Contains(grepLog(t, a, "reported"), "prefetch profile reported to the fleet's watcher") {
		t.Errorf("node A logged no report; its log:\n%s", grepLog(t, a, "profile"))
	}
	closeNode(t, a)

	after := cli.show(t, pushed.Ref)
	as := after.Manifests[0].Artifacts
	if len(as) != 2 || !as[0].Bound || as[0].ProfileEntries == 0 || as[1].Descriptor.Digest != first.Manifests[0].Artifacts[0].Descriptor.Digest {
		t.Fatalf("after the fleet profile rill show lists %+v", as)
	}
	t.Logf("the fleet's profile: %d paths, in the artifact %s", as[0].ProfileEntries, as[0].Descriptor.Digest)

	// Node B: a cold start of the same tag prefetches the profile.
	b := startNode(t, reg, "")
	if _, err := b.CRI.Pull(ctx, pushed.Ref); err != nil {
		t.Fatalf("node B: crictl pull: %v", err)
	}
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(grepLog(t, b, "prefetch done"), "files=") {
		if time.Now().After(deadline) {
			t.Fatalf("node B: no prefetch within a minute of the pull; its log:\n%s", grepLog(t, b, "prefetch"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := prefetched(t, b); n < int64(want.Len())/4 {
		t.Errorf("node B prefetched %d bytes; the profile's files alone are %d bytes uncompressed", n, want.Len())
	} else {
		t.Logf("node B prefetched %.1f MiB: %s", float64(n)/(1<<20), grepLog(t, b, "prefetch done"))
	}
	res, err = b.CRI.RunInPod(ctx, "fleet-b", pushed.Ref, command, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != want.String() {
		t.Errorf("node B's run: exit %d, %d bytes (want %d), stderr %q", res.ExitCode, len(res.Stdout), want.Len(), res.Stderr)
	}
	closeNode(t, b)
}

// startNode starts rill-snapshotter (with metrics and extra config) and containerd over reg.
func startNode(t *testing.T, reg *harness.Registry, config string) *harness.Env {
	t.Helper()
	metrics, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	env, err := harness.Start(t.Context(), harness.Options{Logf: t.Logf, MetricsAddress: metrics, Registry: reg, SnapshotterConfig: config})
	if err != nil {
		t.Fatalf("starting a node: %v", err)
	}
	t.Cleanup(func() { closeNode(t, env) })
	return env
}

// closeNode stops a node and checks that nothing of it outlives it (a second call is a no-op).
func closeNode(t *testing.T, env *harness.Env) {
	t.Helper()
	processes, dir := env.Processes(), env.Dir
	if err := env.Close(context.Background(), t.Failed()); err != nil {
		t.Errorf("stopping a node: %v", err)
	}
	for _, p := range processes {
		if p.Alive() {
			t.Errorf("%s (pid %d) still runs after the node was closed", p.Name(), p.PID())
		}
	}
	if mounts, err := harness.MountsUnder(dir); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left below %s after the node was closed: %v (%v)", dir, mounts, err)
	}
}

// prefetched is what the node's prefetch fetched from the registry (compressed bytes).
func prefetched(t *testing.T, env *harness.Env) int64 {
	t.Helper()
	v, err := env.Snapshotter.Metric(t.Context(), "rill_fs_fetched_bytes_total", map[string]string{"kind": "prefetch"})
	if err != nil {
		t.Fatal(err)
	}
	return int64(v)
}
