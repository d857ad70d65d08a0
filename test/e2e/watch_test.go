package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// watchDeadline bounds each wait for the watcher (a conversion of a few hundred MB included).
const watchDeadline = 5 * time.Minute

// rillCLI runs the rill binary against a plain-HTTP registry on loopback.
type rillCLI struct {
	t        *testing.T
	bin      string
	hostsDir string
}

func newRillCLI(t *testing.T) *rillCLI {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rill")
	if err := harness.BuildGo(t.Context(), mustRepoRoot(t), "./cmd/rill", bin, false); err != nil {
		t.Fatalf("building rill: %v", err)
	}
	return &rillCLI{t: t, bin: bin, hostsDir: t.TempDir()}
}

func mustRepoRoot(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// registryArgs are the flags that reach the test registry.
func (r *rillCLI) registryArgs() []string {
	return []string{"--plain-http", "--hosts-dir", r.hostsDir, "--docker-config", filepath.Join(r.hostsDir, "none.json")}
}

// run runs rill with args and returns its stdout, or the error with stderr.
func (r *rillCLI) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(r.t.Context(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("rill %s: %w\nstderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (r *rillCLI) must(args ...string) string {
	r.t.Helper()
	out, err := r.run(args...)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

// watcher is a rill watch process the test starts, kills and restarts.
type watcher struct {
	cli              *rillCLI
	args             []string
	cmd              *exec.Cmd
	exited           chan struct{}
	log              string
	api              string
	registry, listen string
}

func (w *watcher) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(w.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	w.cmd = exec.Command(w.cli.bin, w.args...)
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(w.cmd, w.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := w.cli.run("operation", "list", "--watcher", w.api); err == nil {
			return
		}
		select {
		case <-w.exited:
			t.Fatalf("rill watch exited at start; its log:\n%s", readFile(w.log))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("rill watch not answering after 30s; its log:\n%s", readFile(w.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends sig to the watcher (by PID) and waits for it to exit.
func (w *watcher) kill(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if w.cmd == nil {
		return
	}
	_ = syscall.Kill(w.cmd.Process.Pid, sig)
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.exited
		t.Errorf("rill watch (pid %d) did not exit within 30s of %s", w.cmd.Process.Pid, sig)
	}
	w.cmd = nil
}

func (w *watcher) operations(t *testing.T) []operation.Operation {
	t.Helper()
	var ops []operation.Operation
	if err := json.Unmarshal([]byte(w.cli.must("operation", "list", "--json", "--watcher", w.api)), &ops); err != nil {
		t.Fatal(err)
	}
	return ops
}

// waitOperation polls until an operation on image (HOST/REPO:TAG) satisfies ok.
func (w *watcher) waitOperation(t *testing.T, image, what string, ok func(operation.Operation) bool) operation.Operation {
	t.Helper()
	deadline := time.Now().Add(watchDeadline)
	for {
		for _, op := range w.operations(t) {
			if op.Image() == image && ok(op) {
				return op
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no operation on %s %s within %s: %+v\nwatcher log:\n%s", image, what, watchDeadline, w.operations(t), tail(readFile(w.log), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// showBound returns rill show's status of image.
func (r *rillCLI) show(t *testing.T, image string) convert.Status {
	t.Helper()
	var st convert.Status
	if err := json.Unmarshal([]byte(r.must(append([]string{"show", "--json", image}, r.registryArgs()...)...)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func boundArtifact(st convert.Status) bool {
	return st.Bound && len(st.Manifests) == 1 && len(st.Manifests[0].Artifacts) == 1 && st.Manifests[0].Artifacts[0].Problem == "" && st.Manifests[0].Artifacts[0].Bound
}

// The watcher as an operator runs it, with the registry's notifications pointed at it:
// enabling a repository makes new pushes stream (the artifact appears, bound to the tag);
// after disabling, pushes get nothing; a watcher killed in the middle of a conversion
// completes it after a restart.
func TestWatch(t *testing.T) {
	ctx := t.Context()
	cli := newRillCLI(t)
	dir := t.TempDir()
	hook, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := harness.StartRegistryNotifying(ctx, filepath.Join(dir, "registry"), harness.NotifyEndpoint{Name: "rill", URL: "http://" + hook + "/events"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := reg.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	host := reg.Host()
	w := &watcher{cli: cli, log: filepath.Join(dir, "watch.log"), api: "unix://" + filepath.Join(dir, "watch.sock"), registry: host, listen: hook}
	w.args = append([]string{"watch", "--registry", host, "--listen", hook, "--api", w.api, "--state-dir", filepath.Join(dir, "state"),
		"--reconcile-interval", "1h", "--temp-dir", t.TempDir()}, cli.registryArgs()...)
	w.start(t)
	t.Cleanup(func() {
		w.kill(t, syscall.SIGTERM)
		if t.Failed() {
			t.Logf("watcher log:\n%s", tail(readFile(w.log), 80))
		}
	})

	repo := host + "/rill/watched"
	cli.must(append([]string{"repo", "enable", repo}, cli.registryArgs()...)...)
	if out := cli.must(append([]string{"repo", "show", repo}, cli.registryArgs()...)...); !strings.Contains(out, "enabled") {
		t.Fatalf("rill repo show after enable: %s", out)
	}

	// A push to the enabled repository: the artifact appears, bound to the tag.
	v1 := pushSmall(t, repo+":v1", "one")
	w.waitOperation(t, repo+":v1", "succeeded", func(op operation.Operation) bool { return op.State == operation.Succeeded })
	if st := cli.show(t, v1.Ref); !boundArtifact(st) {
		t.Fatalf("after the watcher's work, rill show: %+v", st)
	}

	// Disabled: a push gets nothing. Notifications are delivered in order, so once a later
	// push to another enabled repository has its operation, the disabled push was seen.
	cli.must(append([]string{"repo", "disable", repo}, cli.registryArgs()...)...)
	v2 := pushSmall(t, repo+":v2", "two")
	sentinel := host + "/rill/sentinel"
	cli.must(append([]string{"repo", "enable", sentinel}, cli.registryArgs()...)...)
	pushSmall(t, sentinel+":v1", "sentinel")
	w.waitOperation(t, sentinel+":v1", "succeeded", func(op operation.Operation) bool { return op.State == operation.Succeeded })
	for _, op := range w.operations(t) {
		if op.Image() == v2.Ref {
			t.Fatalf("a push to a disabled repository started an operation: %+v", op)
		}
	}
	if st := cli.show(t, v2.Ref); st.Bound || len(st.Manifests[0].Artifacts) != 0 {
		t.Fatalf("a push to a disabled repository got an artifact: %+v", st)
	}
	if st := cli.show(t, v1.Ref); !boundArtifact(st) {
		t.Fatalf("disabling removed what existed: %+v", st)
	}

	// An operator's rill create --no-wait: the watcher does it as an operation, whatever the
	// repository's policy says (disabled here); the command returns the operation's ID at once.
	id := strings.TrimSpace(cli.must(append([]string{"create", "--no-wait", "--watcher", w.api, v2.Ref}, cli.registryArgs()...)...))
	manual := w.waitOperation(t, v2.Ref, "succeeded (rill create --no-wait)", func(op operation.Operation) bool {
		if op.ID == id && op.State.Final() && op.State != operation.Succeeded {
			t.Fatalf("the operation of rill create --no-wait ended %s: %s", op.State, op.Message)
		}
		return op.ID == id && op.State == operation.Succeeded
	})
	if manual.Trigger != "rill create" {
		t.Errorf("the operation of rill create --no-wait: %+v", manual)
	}
	if st := cli.show(t, v2.Ref); !boundArtifact(st) {
		t.Fatalf("after rill create --no-wait's operation, rill show: %+v", st)
	}

	// Killed mid-operation: the operation is resumed and completes after a restart.
	cli.must(append([]string{"repo", "enable", repo}, cli.registryArgs()...)...)
	big := pushBig(t, repo+":big")
	running := w.waitOperation(t, big.Ref, "running", func(op operation.Operation) bool { return op.State == operation.Running })
	w.kill(t, syscall.SIGKILL)
	w.start(t)
	op := w.waitOperation(t, big.Ref, "succeeded after the restart", func(op operation.Operation) bool { return op.State == operation.Succeeded })
	if op.ID != running.ID || op.Attempts < 2 {
		t.Fatalf("after the restart: %+v; want operation %s resumed (2 attempts or more)", op, running.ID)
	}
	if st := cli.show(t, big.Ref); !boundArtifact(st) {
		t.Fatalf("after the resumed operation, rill show: %+v", st)
	}
	if out := cli.must("operation", "show", op.ID, "--watcher", w.api); !strings.Contains(out, "Succeeded") {
		t.Fatalf("rill operation show: %s", out)
	}
	if _, err := cli.run("operation", "cancel", op.ID, "--watcher", w.api); err == nil {
		t.Fatal("canceling a finished operation succeeded")
	}
}

// rill pull goes through containerd with the labels that make rill stream: after rill
// create, every layer of the image is a streamed snapshot in rill.
func TestPull(t *testing.T) {
	env := startEnv(t)
	ctx := t.Context()
	cli := newRillCLI(t)
	deb, err := images.Debian(ctx, images.DefaultCacheDir, t.Logf)
	if err != nil {
		t.Fatalf("building the debian image: %v", err)
	}
	deb.Repository = "rill/debian-pull:bookworm"
	pushed, err := deb.Push(ctx, env.Registry.Host())
	if err != nil {
		t.Fatal(err)
	}
	cli.must(append([]string{"create", pushed.Ref}, cli.registryArgs()...)...)
	out := cli.must("pull", pushed.Ref, "--address", env.Containerd.Socket(), "--hosts-dir", env.CertsDir, "--namespace", "k8s.io")
	t.Logf("rill pull:\n%s", out)
	want := fmt.Sprintf("%d of %d layers streamed", len(pushed.DiffIDs), len(pushed.DiffIDs))
	if !strings.Contains(out, want) {
		t.Errorf("rill pull says %q, want %q", out, want)
	}
	assertStreamed(t, env, pushed, "bound-artifact")
	if err := env.CRI.RemoveImage(ctx, pushed.Ref); err != nil {
		t.Errorf("removing the pulled image: %v", err)
	}
}

// pushSmall pushes a one-layer image holding /content.
func pushSmall(t *testing.T, ref, content string) *harness.PushedImage {
	t.Helper()
	return pushLayer(t, ref, func(w *harness.LayerWriter) error {
		return w.Add(&tar.Header{Typeflag: tar.TypeReg, Name: "content", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(1700000000, 0)}, strings.NewReader(content))
	})
}

// pushBig pushes an image with a 256 MiB file of incompressible bytes: converting it takes
// long enough to kill the watcher in the middle.
func pushBig(t *testing.T, ref string) *harness.PushedImage {
	t.Helper()
	const size = 256 << 20
	return pushLayer(t, ref, func(w *harness.LayerWriter) error {
		src := io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size)
		return w.Add(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0)}, src)
	})
}

func pushLayer(t *testing.T, ref string, fill func(*harness.LayerWriter) error) *harness.PushedImage {
	t.Helper()
	w, err := harness.NewLayerWriter(filepath.Join(t.TempDir(), "layer.tar.gz"), gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(w); err != nil {
		t.Fatal(err)
	}
	layer, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	p, err := harness.Push(t.Context(), ref, harness.ImageSpec{Layers: []*harness.Layer{layer}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func readFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
