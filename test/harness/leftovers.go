package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runcStateRoot is where containerd-shim-runc-v2 keeps runc's state, one directory per
// namespace. It is fixed, whatever containerd's own state directory is.
const runcStateRoot = "/run/containerd/runc"

// killRuncContainers kills and deletes the runc containers whose bundle lies below dir (those
// of this harness's containerd), in every namespace. It returns the IDs it had to remove.
func killRuncContainers(ctx context.Context, dir string) ([]string, error) {
	runc, err := LookTool("runc")
	if err != nil {
		return nil, err
	}
	roots, err := os.ReadDir(runcStateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing runc state roots: %w", err)
	}
	var removed []string
	var errs []error
	for _, r := range roots {
		root := filepath.Join(runcStateRoot, r.Name())
		out, err := exec.CommandContext(ctx, runc, "--root", root, "list", "--format", "json").Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("runc --root %s list: %w", root, err))
			continue
		}
		var containers []struct {
			ID     string `json:"id"`
			Bundle string `json:"bundle"`
		}
		if err := json.Unmarshal(bytes.TrimSpace(out), &containers); err != nil {
			errs = append(errs, fmt.Errorf("decoding runc list of %s: %w", root, err))
			continue
		}
		for _, c := range containers {
			if !strings.HasPrefix(c.Bundle, dir+"/") {
				continue
			}
			_ = exec.CommandContext(ctx, runc, "--root", root, "kill", "--all", c.ID, "KILL").Run()
			if out, err := exec.CommandContext(ctx, runc, "--root", root, "delete", "--force", c.ID).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("runc delete %s: %w: %s", c.ID, err, out))
			}
			removed = append(removed, c.ID)
		}
	}
	return removed, errors.Join(errs...)
}

// shimPIDs returns the PIDs of the containerd shims serving the containerd at socket.
func shimPIDs(socket string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // exited meanwhile
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == socket {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// waitShimsGone waits up to timeout for the shims of the containerd at socket to exit and
// returns those still running.
func waitShimsGone(socket string, timeout time.Duration) ([]int, error) {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := shimPIDs(socket)
		if err != nil || len(pids) == 0 || time.Now().After(deadline) {
			return pids, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killPIDs sends SIGKILL to each PID and waits (up to timeout) until none is alive.
func killPIDs(pids []int, timeout time.Duration) error {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, strconv.Itoa(pid))
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %s survive SIGKILL for %s", strings.Join(left, ", "), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alive reports whether pid is a running process (a zombie is not).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	return data[i+2] != 'Z' && data[i+2] != 'X'
}
