package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// daemonBinary is the rill-snapshotter built once for this test run, and emptyConfig an empty
// config file, so tests never read a config installed on the machine (set by TestMain).
var daemonBinary, emptyConfig string

// noFDStore turns the fd store off in the configs of these tests.
const noFDStore = "[fdstore]\nmode = \"off\"\n"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rill-snapshotter-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBinary = filepath.Join(dir, "rill-snapshotter")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=test", "-o", daemonBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building rill-snapshotter:", err)
		os.Exit(1)
	}
	emptyConfig = filepath.Join(dir, "empty.toml")
	// No fd-holder outlives these tests: they do not restart daemons under running containers
	// (test/e2e does, with a holder of its own).
	if err := os.WriteFile(emptyConfig, []byte(noFDStore), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemonProc is a running rill-snapshotter process.
type daemonProc struct {
	cmd     *exec.Cmd
	address string
	logs    *syncBuffer
	exited  chan struct{}
	err     error
}

// startDaemon starts rill-snapshotter with args and waits until its socket answers.
func startDaemon(t testing.TB, address string, args ...string) *daemonProc {
	t.Helper()
	d, err := launch(address, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })
	if err := d.waitReady(10 * time.Second); err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, d.logs)
	}
	return d
}

func launch(address string, args ...string) (*daemonProc, error) {
	d := &daemonProc{address: address, logs: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(daemonBinary, append([]string{"--config", emptyConfig, "--address", address}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	return d, nil
}

func (d *daemonProc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("rill-snapshotter exited before it was ready: %v", d.err)
		default:
		}
		if conn, err := net.Dial("unix", d.address); err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("rill-snapshotter not ready on %s after %s", d.address, timeout)
}

// stop sends SIGTERM and waits for the exit; the daemon must exit 0.
func (d *daemonProc) stop(t testing.TB) {
	t.Helper()
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.err != nil {
			t.Errorf("rill-snapshotter exited with %v after SIGTERM; logs:\n%s", d.err, d.logs)
		}
	case <-time.After(40 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		t.Errorf("rill-snapshotter did not exit after SIGTERM; logs:\n%s", d.logs)
	}
}

func dialSnapshotter(t testing.TB, address string) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rill")
}

// TestConformanceOverGRPC runs containerd's snapshotter test suite against the daemon, through
// containerd's own proxy client: what containerd sees of rill.
func TestConformanceOverGRPC(t *testing.T) {
	requireRoot(t)
	// The suite adapts a few checks to the filesystem underneath; rill is overlayfs.
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		address := filepath.Join(filepath.Dir(root), "rill.sock")
		d, err := launch(address, "--root", root, "--log-level", "warn")
		if err == nil {
			err = d.waitReady(10 * time.Second)
		}
		if err != nil {
			return nil, nil, err
		}
		conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rill")
		return sn, func() error {
			conn.Close()
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.exited:
			case <-time.After(40 * time.Second):
				_ = d.cmd.Process.Kill()
				<-d.exited
				return fmt.Errorf("daemon did not stop on SIGTERM")
			}
			if d.err != nil {
				return fmt.Errorf("daemon exited with %v; logs:\n%s", d.err, d.logs)
			}
			return nil
		}, nil
	})
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("these tests mount overlayfs and must run as root (make test runs them as root)")
	}
}

// syncBuffer collects a process's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
