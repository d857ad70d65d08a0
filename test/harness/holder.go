package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoHolder is returned by Snapshotter.HolderPID when no fd-holder serves the harness's
// holder socket.
var ErrNoHolder = errors.New("no fd-holder runs")

// The fd-holder (`rill-snapshotter fd-holder --socket PATH`) keeps the descriptors of the
// daemon's FUSE connections while the daemon restarts. The daemon starts it itself, in a
// session of its own, so it is no child of the harness and outlives the daemon: the harness
// finds it by its pid file (PATH.pid, locked by the holder while it runs) and stops it by PID
// in Env.Close.

// HolderSocket is the fd-holder's socket (fdstore.holder_socket in the daemon's config).
func (s *Snapshotter) HolderSocket() string { return s.holderSocket }

// HolderLogPath is where a holder the daemon started writes its log.
func (s *Snapshotter) HolderLogPath() string { return s.holderSocket + ".log" }

// HolderPID returns the pid of the fd-holder serving the harness's holder socket, or
// ErrNoHolder. The pid comes from the holder's pid file and is checked against /proc: the
// process must run `... fd-holder ... --socket <HolderSocket>` (a pid file left by a holder
// that was killed names a dead or unrelated process).
func (s *Snapshotter) HolderPID() (int, error) {
	data, err := os.ReadFile(s.holderSocket + ".pid")
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: no pid file %s.pid", ErrNoHolder, s.holderSocket)
	}
	if err != nil {
		return 0, fmt.Errorf("reading the fd-holder's pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%w: pid file %s.pid holds %q", ErrNoHolder, s.holderSocket, data)
	}
	if !alive(pid) || !isHolderOf(pid, s.holderSocket) {
		return 0, fmt.Errorf("%w: pid %d of %s.pid is not a running fd-holder of this socket", ErrNoHolder, pid, s.holderSocket)
	}
	return pid, nil
}

// isHolderOf reports whether process pid runs `... fd-holder ... --socket socket`.
func isHolderOf(pid int, socket string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	if !slices.Contains(args, "fd-holder") {
		return false
	}
	for i, a := range args {
		if (a == "--socket" || a == "-socket") && i+1 < len(args) && filepath.Clean(args[i+1]) == filepath.Clean(socket) {
			return true
		}
		if v, ok := strings.CutPrefix(a, "--socket="); ok && filepath.Clean(v) == filepath.Clean(socket) {
			return true
		}
	}
	return false
}

// KillHolder kills the fd-holder with SIGKILL, as a crash (or an OOM kill) would, and waits
// until it is gone. The descriptors it kept are closed: the FUSE connections that only it kept
// open are aborted. It fails when no holder runs.
func (s *Snapshotter) KillHolder(ctx context.Context) error {
	pid, err := s.HolderPID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing the fd-holder (pid %d): %w", pid, err)
	}
	return waitGone(ctx, pid, "fd-holder", 30*time.Second)
}

// StopHolder stops the fd-holder, if one runs (SIGTERM, SIGKILL after 10 s), and returns its
// pid (0 if none ran). Every descriptor it kept is closed: FUSE connections only it kept are
// ended, and the containers reading them lose their files. Stop the daemon first, or it starts
// another holder.
func (s *Snapshotter) StopHolder(ctx context.Context) (int, error) {
	return s.stopHolder(ctx, 10*time.Second)
}

// stopHolder stops the fd-holder, if one runs: SIGTERM, then SIGKILL after grace. It returns
// the pid it stopped (0 if none ran) and an error when the holder had to be killed or does not
// die.
func (s *Snapshotter) stopHolder(ctx context.Context, grace time.Duration) (int, error) {
	pid, err := s.HolderPID()
	if errors.Is(err, ErrNoHolder) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return pid, fmt.Errorf("sending SIGTERM to the fd-holder (pid %d): %w", pid, err)
	}
	if waitGone(ctx, pid, "fd-holder", grace) == nil {
		return pid, nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if err := waitGone(context.WithoutCancel(ctx), pid, "fd-holder", 10*time.Second); err != nil {
		return pid, err
	}
	return pid, fmt.Errorf("the fd-holder (pid %d) did not exit within %s of SIGTERM and was killed", pid, grace)
}

// waitGone waits up to timeout until pid no longer runs (a zombie counts as gone: the holder is
// no child of ours, init reaps it).
func waitGone(ctx context.Context, pid int, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still runs %s after it was signalled", name, pid, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (pid %d) to exit: %w", name, pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}
