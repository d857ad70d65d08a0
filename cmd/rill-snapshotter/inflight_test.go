package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// stallingDir is a FUSE directory whose listing waits until the test lets it go: a Usage call
// that walks a snapshot holding it stays in flight exactly as long as the test wants.
type stallingDir struct {
	gofs.Inode
	entered     chan struct{}
	enteredOnce sync.Once
	release     chan struct{}
}

var _ gofs.NodeReaddirer = (*stallingDir)(nil)

func (d *stallingDir) Readdir(context.Context) (gofs.DirStream, syscall.Errno) {
	d.enteredOnce.Do(func() { close(d.entered) })
	<-d.release // not the request's context: the kernel waits for the answer anyway
	return gofs.NewListDirStream(nil), gofs.OK
}

// A call in flight when SIGTERM arrives finishes and succeeds; meanwhile the daemon accepts no
// new connection; then it exits 0. The call is a Usage of an active snapshot whose directory
// holds a FUSE mount that answers its listing only when the test says so.
func TestInFlightCallFinishesAtSigterm(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "rill.sock")
	d := startDaemon(t, sock, "--root", t.TempDir())
	sn := dialSnapshotter(t, sock)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	mounts, err := sn.Prepare(ctx, "active", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		t.Fatalf("want the bind mount of a snapshot without parent, got %+v", mounts)
	}
	mountpoint := filepath.Join(mounts[0].Source, "stalling")
	if err := os.Mkdir(mountpoint, 0o755); err != nil {
		t.Fatal(err)
	}
	stall := &stallingDir{entered: make(chan struct{}), release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(stall.release) }) }
	server, err := gofs.Mount(mountpoint, stall, &gofs.Options{
		MountOptions: fuse.MountOptions{FsName: "rill-test-stalling", DirectMount: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		release()
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", mountpoint, err)
		}
	})

	type result struct {
		usage snapshots.Usage
		err   error
	}
	done := make(chan result, 1)
	go func() {
		u, err := sn.Usage(ctx, "active")
		done <- result{u, err}
	}()
	select {
	case <-stall.entered:
	case r := <-done:
		t.Fatalf("Usage returned without walking the snapshot: %+v, %v", r.usage, r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("Usage never reached the snapshot's directory")
	}

	signalIdleThread(t, d.cmd.Process.Pid, syscall.SIGTERM)
	waitFor(t, "the daemon to start shutting down", func() bool {
		return strings.Contains(d.logs.String(), "shutting down: finishing in-flight calls")
	})
	waitFor(t, "the daemon to stop accepting connections", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-d.exited:
		t.Fatalf("the daemon exited with a call in flight: %v\n%s", d.err, d.logs)
	case r := <-done:
		t.Fatalf("the in-flight call ended before the test let it finish: %+v, %v", r.usage, r.err)
	default:
	}

	release()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("the call in flight at SIGTERM failed: %v\n%s", r.err, d.logs)
		}
		if r.usage.Inodes < 2 {
			t.Errorf("Usage counted %d inodes; the snapshot holds at least its directory and the mountpoint", r.usage.Inodes)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the call in flight at SIGTERM did not finish\n%s", d.logs)
	}
	select {
	case <-d.exited:
		if d.err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", d.err, d.logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after the in-flight call finished\n%s", d.logs)
	}
}

// signalIdleThread sends sig to a thread of process pid that is parked in futex(2), the
// wait of an idle Go thread. A signal sent to the process may be given to the thread whose
// Usage call waits for the stalling FUSE directory: the kernel then asks the directory to
// interrupt the call, which it does not, and that thread runs the handler only once the test
// releases the call — the daemon would see SIGTERM too late.
func signalIdleThread(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		// The first field of syscall is the number of the call the thread waits in.
		sc, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
		if err != nil || !strings.HasPrefix(string(sc), strconv.Itoa(unix.SYS_FUTEX)+" ") {
			continue
		}
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.Tgkill(pid, tid, sig); err != nil {
			t.Fatalf("signal thread %d of the daemon: %v", tid, err)
		}
		return
	}
	t.Fatalf("no thread of the daemon (pid %d) is parked in futex(2) to take the signal", pid)
}

// waitFor polls cond until it holds; a generous bound only catches a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
