package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rillstream/rill/test/harness"
)

// rill doctor on a node set up as the harness sets it up finds nothing wrong, asks the running
// containerd whether it loaded rill, and names what breaks when rill-snapshotter is down or
// containerd's socket is wrong; rill why lists the decisions of a pull.
func TestDoctorAndWhy(t *testing.T) {
	env := startEnv(t)
	ctx := t.Context()
	bin := filepath.Join(t.TempDir(), "rill")
	if err := harness.BuildGo(ctx, env.RepoRoot, "./cmd/rill", bin, false); err != nil {
		t.Fatalf("building rill: %v", err)
	}
	rillConfig := filepath.Join(filepath.Dir(env.Snapshotter.Root()), "config.toml")
	statusSocket := filepath.Join(filepath.Dir(env.Snapshotter.Socket()), "status.sock")
	rill := func(args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, cliTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("rill %s: %v", strings.Join(args, " "), err)
		}
		return string(out), code
	}
	doctor := func(extra ...string) (string, int) {
		return rill(append([]string{"doctor", "--config", rillConfig, "--containerd-config", filepath.Join(env.Containerd.Dir(), "config.toml"),
			"--address", env.Containerd.Socket(), "--plain-http", "--docker-config", filepath.Join(t.TempDir(), "none.json")}, extra...)...)
	}

	out, code := doctor()
	if code != 0 || !strings.Contains(out, "ok      containerd: containerd at "+env.Containerd.Socket()+" has the rill snapshotter loaded") {
		t.Fatalf("doctor on a good node: exit %d:\n%s", code, out)
	}
	t.Logf("rill doctor:\n%s", out)

	// An ordinary image: pulled in full, and doctor and why say why.
	ref := env.SandboxImage.Ref
	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		t.Fatalf("crictl pull %s: %v", ref, err)
	}
	out, code = doctor(ref)
	if code != 1 || !strings.Contains(out, "PROBLEM would stream: no, linux/amd64: the image has no streaming artifact") {
		t.Errorf("doctor %s: exit %d:\n%s", ref, code, out)
	}
	out, code = rill("why", "--socket", statusSocket)
	if code != 0 || !strings.Contains(out, ref) || !strings.Contains(out, "full: no-bound-artifact") {
		t.Errorf("rill why: exit %d:\n%s", code, out)
	}
	out, code = rill("why", "--socket", statusSocket, ref)
	if code != 0 || !strings.Contains(out, "pulled in full") || !strings.Contains(out, "no-bound-artifact: rill create "+ref) {
		t.Errorf("rill why %s: exit %d:\n%s", ref, code, out)
	}

	out, code = doctor("--address", filepath.Join(t.TempDir(), "no-containerd.sock"))
	if code != 1 || !strings.Contains(out, "PROBLEM containerd: cannot reach containerd") {
		t.Errorf("doctor with containerd's socket wrong: exit %d:\n%s", code, out)
	}
	if err := env.Snapshotter.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	out, code = doctor()
	if code != 1 || !strings.Contains(out, "PROBLEM rill socket") || !strings.Contains(out, "rill-snapshotter is not running") {
		t.Errorf("doctor with rill-snapshotter stopped: exit %d:\n%s", code, out)
	}
	if err := env.Snapshotter.Start(ctx); err != nil {
		t.Fatal(err)
	}
}
