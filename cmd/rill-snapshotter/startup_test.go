package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"
)

// runToExit runs the daemon and returns its exit code and output; it must exit by itself.
func runToExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, daemonBinary, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("rill-snapshotter %v did not exit; output:\n%s", args, out)
	}
	if exitErr, ok := err.(*exec.ExitError); ok {
		return exitErr.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if !strings.Contains(text, "[fdstore]") {
		text += "\n" + noFDStore
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Bad configuration fails at start, non-zero, with a message naming the problem.
func TestBadConfigurationFailsAtStart(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "rill.sock")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"--config", writeConfig(t, "root = \"/tmp/x\"\nrooot = \"/var/lib/rill\"\n")}, "unknown key rooot"},
		{"unknown key in a table", []string{"--config", writeConfig(t, "[log]\nlevl = \"debug\"\n")}, "log.levl"},
		{"missing root", []string{"--config", writeConfig(t, "root = \"\"\n")}, "root: must be an absolute"},
		{"relative root flag", []string{"--config", emptyConfig, "--root", "var/lib/rill"}, "root: must be an absolute"},
		{"invalid log level", []string{"--config", emptyConfig, "--log-level", "loud"}, "log.level"},
		{"wrong type", []string{"--config", writeConfig(t, "[snapshotter]\nasync_remove = \"yes\"\n")}, "async_remove"},
		{"config file named but absent", []string{"--config", filepath.Join(dir, "nope.toml")}, "nope.toml"},
		{"stray argument", []string{"--config", emptyConfig, "serve"}, "unexpected argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := runToExit(t, append(c.args, "--address", sock)...)
			if code == 0 {
				t.Fatalf("exit 0 for %s; output:\n%s", c.name, out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("message does not name the problem (want %q):\n%s", c.want, out)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, out := runToExit(t, "--version")
	if code != 0 || strings.TrimSpace(out) != "rill-snapshotter test" {
		t.Fatalf("--version: exit %d, output %q", code, out)
	}
}

// A socket path on which another process answers is refused; nothing is taken from it.
func TestSocketInUseIsRefused(t *testing.T) {
	requireRoot(t)
	sock := filepath.Join(t.TempDir(), "rill.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	root := t.TempDir()
	code, out := runToExit(t, "--config", emptyConfig, "--address", sock, "--root", root)
	if code == 0 || !strings.Contains(out, sock+" is in use") {
		t.Fatalf("exit %d; want a refusal naming the socket in use:\n%s", code, out)
	}
	// It stops before opening any state (restoring streamed layers would mount them).
	for _, name := range []string{"metadata.db", "cache", "snapshots"} {
		if _, err := os.Lstat(filepath.Join(root, name)); !os.IsNotExist(err) {
			t.Errorf("refused start opened state: %s exists (%v)", name, err)
		}
	}
	if conn, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("the other process's socket was taken away: %v", err)
	} else {
		conn.Close()
	}
}

// A socket left by a crashed daemon is replaced, and the daemon serves on it.
func TestStaleSocketIsReplaced(t *testing.T) {
	requireRoot(t)
	sock := filepath.Join(t.TempDir(), "rill.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close() // the file stays, nobody listens: what a crash leaves
	d := startDaemon(t, sock, "--root", t.TempDir())
	sn := dialSnapshotter(t, sock)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	if _, err := sn.Prepare(ctx, "k", ""); err != nil {
		t.Fatalf("daemon on a replaced stale socket does not serve: %v\n%s", err, d.logs)
	}
	if !strings.Contains(d.logs.String(), "stale socket") {
		t.Errorf("replacing a stale socket is not logged:\n%s", d.logs)
	}
}

// The socket's directory is created 0700 and the socket 0600: only root talks to it.
func TestSocketPermissions(t *testing.T) {
	requireRoot(t)
	sock := filepath.Join(t.TempDir(), "run", "rill", "rill.sock")
	startDaemon(t, sock, "--root", t.TempDir())
	for path, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700, sock: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}
}

// SIGTERM and SIGINT stop the daemon: exit 0, shutdown logged, and the state is reusable by
// the next start.
func TestSignalStopsCleanlyAndStateSurvives(t *testing.T) {
	requireRoot(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			dir, root := t.TempDir(), t.TempDir()
			sock := filepath.Join(dir, "rill.sock")
			ctx := namespaces.WithNamespace(context.Background(), "rill-test")

			first := startDaemon(t, sock, "--root", root)
			sn := dialSnapshotter(t, sock)
			if _, err := sn.Prepare(ctx, "layer-active", ""); err != nil {
				t.Fatal(err)
			}
			if err := sn.Commit(ctx, "layer", "layer-active"); err != nil {
				t.Fatal(err)
			}
			if err := first.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-first.exited:
				if first.err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, first.err, first.logs)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no exit after %v", sig)
			}
			if !strings.Contains(first.logs.String(), "rill-snapshotter stopped") {
				t.Errorf("shutdown not logged:\n%s", first.logs)
			}
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("socket left behind after %v: %v", sig, err)
			}

			startDaemon(t, sock, "--root", root)
			sn = dialSnapshotter(t, sock)
			info, err := sn.Stat(ctx, "layer")
			if err != nil {
				t.Fatalf("snapshot lost across a restart: %v", err)
			}
			if info.Kind.String() != "Committed" {
				t.Fatalf("snapshot kind after restart: %v", info.Kind)
			}
		})
	}
}

// A second daemon on the root of a running one (a second unit, a manual start to debug) exits
// at once, non-zero, naming the root in use and the daemon that holds it; the first one goes
// on serving. With streaming off the second used to wait forever on the metadata store's lock,
// even through SIGTERM.
func TestSecondDaemonOnSameRootIsRefused(t *testing.T) {
	requireRoot(t)
	for _, streaming := range []bool{true, false} {
		t.Run(fmt.Sprintf("streaming=%v", streaming), func(t *testing.T) {
			cfg := writeConfig(t, fmt.Sprintf("[streaming]\nenabled = %v\n", streaming))
			dir, root := t.TempDir(), t.TempDir()
			ctx := namespaces.WithNamespace(context.Background(), "rill-test")
			first := startDaemon(t, filepath.Join(dir, "first.sock"), "--config", cfg, "--root", root)
			sn := dialSnapshotter(t, first.address)
			if _, err := sn.Prepare(ctx, "before", ""); err != nil {
				t.Fatal(err)
			}

			second := filepath.Join(dir, "second.sock")
			code, out := runToExit(t, "--config", cfg, "--address", second, "--root", root)
			if code == 0 {
				t.Fatalf("a second daemon on root %s exited 0:\n%s", root, out)
			}
			want := fmt.Sprintf("root %s is in use by another rill-snapshotter (pid %d", root, first.cmd.Process.Pid)
			if !strings.Contains(out, want) {
				t.Fatalf("message does not name the root in use and its holder (want %q):\n%s", want, out)
			}
			if _, err := os.Lstat(second); !os.IsNotExist(err) {
				t.Errorf("the refused daemon left a socket at %s: %v", second, err)
			}

			if _, err := sn.Prepare(ctx, "after", ""); err != nil {
				t.Fatalf("the first daemon stopped serving: %v\n%s", err, first.logs)
			}
			if _, err := sn.Stat(ctx, "before"); err != nil {
				t.Fatalf("the first daemon lost a snapshot: %v", err)
			}
			// The lock goes with the first daemon: the root is usable again at once.
			first.stop(t)
			startDaemon(t, second, "--config", cfg, "--root", root)
			if _, err := dialSnapshotter(t, second).Stat(ctx, "after"); err != nil {
				t.Fatalf("the root's next daemon does not see the snapshots: %v", err)
			}
		})
	}
}

// The metrics endpoint serves call counts and latencies by method.
func TestMetricsEndpoint(t *testing.T) {
	requireRoot(t)
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	cfg := writeConfig(t, "[metrics]\naddress = \""+addr+"\"\n[log]\nformat = \"json\"\n")
	sock := filepath.Join(t.TempDir(), "rill.sock")
	d := startDaemon(t, sock, "--config", cfg, "--root", t.TempDir())
	sn := dialSnapshotter(t, sock)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	if _, err := sn.Prepare(ctx, "k", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Stat(ctx, "missing"); err == nil {
		t.Fatal("Stat of a missing key succeeded")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics endpoint: %v\n%s", err, d.logs)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`rill_grpc_requests_total{code="OK",method="/containerd.services.snapshots.v1.Snapshots/Prepare"} 1`,
		`rill_grpc_requests_total{code="NotFound",method="/containerd.services.snapshots.v1.Snapshots/Stat"} 1`,
		`rill_grpc_request_duration_seconds_count{method="/containerd.services.snapshots.v1.Snapshots/Prepare"} 1`,
		`rill_build_info{version="test"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(d.logs.String(), `"msg":"rill-snapshotter ready"`) {
		t.Errorf("log.format json not honoured:\n%s", d.logs)
	}
}

// The status socket answers with the streamed layers (none on a fresh daemon), as JSON.
func TestStatusSocket(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	startDaemon(t, filepath.Join(dir, "rill.sock"), "--root", t.TempDir())
	client := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "status.sock"))
	}}}
	resp, err := client.Get("http://rill/v1/layers")
	if err != nil {
		t.Fatalf("status socket beside the API socket: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("status: %d %q", resp.StatusCode, body)
	}
}
