package harness

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The harness finds, kills and stops a real fd-holder (`rill-snapshotter fd-holder`) by the pid
// file it writes, started as the daemon starts it: in a session of its own, no child the
// harness waits for.
func TestHolderFoundKilledAndStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds rill-snapshotter")
	}
	ctx := t.Context()
	repoRoot, err := RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "rill-snapshotter")
	if err := BuildGo(ctx, repoRoot, "./cmd/rill-snapshotter", bin, false); err != nil {
		t.Fatal(err)
	}
	s := &Snapshotter{holderSocket: filepath.Join(dir, "fdstore.sock")}
	start := func() int {
		t.Helper()
		cmd := exec.Command(bin, "fd-holder", "--socket", s.HolderSocket())
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait() // reap it, as init would
		deadline := time.Now().Add(30 * time.Second)
		for {
			if c, err := net.Dial("unixpacket", s.HolderSocket()); err == nil {
				c.Close()
				if pid, err := s.HolderPID(); err == nil {
					if pid != cmd.Process.Pid {
						t.Fatalf("HolderPID %d, started %d", pid, cmd.Process.Pid)
					}
					return pid
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("the fd-holder does not serve its socket after 30s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	if _, err := s.HolderPID(); !errors.Is(err, ErrNoHolder) {
		t.Fatalf("before any holder: %v, want ErrNoHolder", err)
	}
	pid := start()
	if err := s.KillHolder(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("the fd-holder (pid %d) survived KillHolder", pid)
	}
	// A killed holder leaves its pid file behind: it names no holder.
	if _, err := os.Stat(s.HolderSocket() + ".pid"); err != nil {
		t.Logf("the killed holder left no pid file: %v", err)
	}
	if _, err := s.HolderPID(); !errors.Is(err, ErrNoHolder) {
		t.Fatalf("after KillHolder: %v, want ErrNoHolder", err)
	}

	pid = start()
	stopped, err := s.stopHolder(context.Background(), 10*time.Second)
	if err != nil || stopped != pid {
		t.Fatalf("stopHolder: pid %d, %v; want %d stopped by SIGTERM", stopped, err, pid)
	}
	if alive(pid) {
		t.Fatalf("the fd-holder (pid %d) survived stopHolder", pid)
	}
	if stopped, err := s.stopHolder(context.Background(), time.Second); stopped != 0 || err != nil {
		t.Fatalf("stopHolder without a holder: pid %d, %v", stopped, err)
	}
}
