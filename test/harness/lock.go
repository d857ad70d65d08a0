package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// instanceLock serializes harnesses on a machine: every containerd's shims put their sockets in
// /run/containerd/s and runc its state in /run/containerd/runc, whatever containerd's own
// directories are, so two test containerds at once could step on each other.
const instanceLock = "/run/lock/rill-test-harness.lock"

// lockInstance waits (up to timeout) to be the only harness on the machine. The lock is released
// by unlock, or by the kernel when the process dies.
func lockInstance(ctx context.Context, timeout time.Duration, logf func(string, ...any)) (unlock func(), err error) {
	if err := os.MkdirAll("/run/lock", 0o755); err != nil {
		return nil, fmt.Errorf("creating /run/lock: %w", err)
	}
	f, err := os.OpenFile(instanceLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the harness lock %s: %w", instanceLock, err)
	}
	deadline := time.Now().Add(timeout)
	waiting := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", instanceLock, err)
		}
		holder, _ := os.ReadFile(instanceLock)
		if !waiting {
			logf("another test harness runs on this machine (pid %s); waiting for it to finish", strings.TrimSpace(string(holder)))
			waiting = true
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another test harness (pid %s) held %s for %s: only one can run at a time (containerd shims share /run/containerd)",
				strings.TrimSpace(string(holder)), instanceLock, timeout)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	}
	return func() { f.Close() }, nil
}
