package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is a daemon the harness started. Its stdout and stderr go to a log file.
type Process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // valid once done is closed
}

// startProcess starts bin with args, appending its output to logPath. The process gets its own
// process group (a Ctrl-C in the terminal reaches only the harness, which then stops it in
// order) and is killed by the kernel should the harness die first.
func startProcess(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	return startProcessFiles(name, logPath, env, nil, bin, args...)
}

// startProcessFiles is startProcess that passes files to the process as descriptors 3, 4, ...
// (exec.Cmd.ExtraFiles); the caller keeps its own.
func startProcessFiles(name, logPath string, env []string, files []*os.File, bin string, args ...string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the log of %s: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &Process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// LogPath returns the file that holds the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Alive reports whether the process with this PID is running (per /proc; a zombie is not),
// whatever the harness believes.
func (p *Process) Alive() bool { return alive(p.PID()) }

// Name returns the daemon's name.
func (p *Process) Name() string { return p.name }

// exitError describes how the process ended (nil for exit status 0); call only once it exited.
func (p *Process) exitError() error {
	if p.waitErr != nil {
		return fmt.Errorf("%s (pid %d) exited: %w", p.name, p.PID(), p.waitErr)
	}
	return nil
}

// Stop sends SIGTERM and waits up to grace for the process to exit, then kills it. It returns an
// error when the process had to be killed or exited with a non-zero status.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	if p.Exited() {
		return p.exitError()
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending SIGTERM to %s (pid %d): %w", p.name, p.PID(), err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.exitError()
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survives SIGKILL", p.name, p.PID())
	}
	return fmt.Errorf("%s (pid %d) did not exit within %s of SIGTERM and was killed", p.name, p.PID(), grace)
}

// waitReady polls ready until it returns nil, the process exits, or timeout passes.
func (p *Process) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	var err error
	for {
		if err = ready(ctx); err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (%v); its log %s ends with:\n%s",
				p.name, p.waitErr, p.logPath, tailFile(p.logPath, 30))
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) not ready after %s: %w; its log %s ends with:\n%s",
				p.name, p.PID(), timeout, err, p.logPath, tailFile(p.logPath, 30))
		case <-ticker.C:
		}
	}
}

// tailFile returns the last n lines of the file at path (or why it cannot).
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
