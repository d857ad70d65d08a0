package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// peerConfig describes another proxy snapshotter to measure on the same machine and link. The
// benchmark starts it before each cold run (fresh root) and stops it by PID after.
type peerConfig struct {
	name   string
	bin    string
	args   []string
	socket string
	// images names, per workload, what the peer pulls: "estargz" (the workload converted to
	// eStargz by this benchmark and pushed beside it) or a reference, where {registry} stands
	// for the host the node pulls from (the link).
	images map[string]string
}

type peerFlags struct {
	name, bin, args, socket string
	images                  rawMap
}

func (p *peerFlags) register(fs *flag.FlagSet) {
	p.images = rawMap{}
	fs.StringVar(&p.name, "peer-name", "peer", "name of the peer snapshotter (in containerd's proxy_plugins and the table)")
	fs.StringVar(&p.bin, "peer-bin", "", "binary of another proxy snapshotter to measure (mode peer)")
	fs.StringVar(&p.args, "peer-args", "", "its arguments, space-separated; {root}, {socket} and {registry} are replaced by its fresh state directory, its socket and the registry host:port the node pulls from")
	fs.StringVar(&p.socket, "peer-socket", "{root}/snapshotter.sock", "the unix socket it serves ({root} as in --peer-args)")
	fs.Var(p.images, "peer-image", "WORKLOAD=estargz|REF: what the peer pulls (default estargz: the workload converted to eStargz); in REF, {registry} is the host:port the node pulls from; repeatable")
}

// rawMap is a WORKLOAD=VALUE flag whose value is kept as given.
type rawMap map[string]string

func (f rawMap) String() string { return "" }

func (f rawMap) Set(s string) error {
	w, v, ok := strings.Cut(s, "=")
	if !ok || w == "" || v == "" {
		return fmt.Errorf("want WORKLOAD=VALUE, got %q", s)
	}
	f[w] = v
	return nil
}

func (p *peerFlags) config() (*peerConfig, error) {
	if p.bin == "" {
		if len(p.images) > 0 || p.args != "" {
			return nil, errors.New("--peer-args and --peer-image need --peer-bin")
		}
		return nil, nil
	}
	bin, err := exec.LookPath(p.bin)
	if err != nil {
		return nil, fmt.Errorf("--peer-bin: %w", err)
	}
	if p.name == "" || p.name == "rill" || p.name == "overlayfs" {
		return nil, fmt.Errorf("--peer-name %q: choose a name that is not rill's nor containerd's", p.name)
	}
	return &peerConfig{name: p.name, bin: bin, args: strings.Fields(p.args), socket: p.socket, images: p.images}, nil
}

// image returns what the peer pulls for a workload.
func (c *peerConfig) image(workload string) string {
	if v, ok := c.images[workload]; ok {
		return v
	}
	return "estargz"
}

// peerProcess is a running peer snapshotter.
type peerProcess struct {
	cmd    *exec.Cmd
	root   string
	socket string
	done   chan error
}

// startPeer starts the peer with a fresh root below dir and waits for its socket.
func startPeer(ctx context.Context, c *peerConfig, dir, registry string) (*peerProcess, error) {
	root := filepath.Join(dir, "peer-root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	expand := func(s string) string {
		return strings.NewReplacer("{root}", root, "{registry}", registry).Replace(s)
	}
	socket := expand(c.socket)
	args := make([]string, len(c.args))
	for i, a := range c.args {
		args[i] = strings.ReplaceAll(expand(a), "{socket}", socket)
	}
	logFile, err := os.Create(filepath.Join(dir, "peer.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the peer %s: %w", c.bin, err)
	}
	p := &peerProcess{cmd: cmd, root: root, socket: socket, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err := net.Dial("unix", socket); err == nil {
			conn.Close()
			return p, nil
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("the peer exited before serving %s: %v (log %s)", socket, err, logFile.Name())
		case <-ctx.Done():
			_ = p.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = p.stop()
			return nil, fmt.Errorf("the peer does not serve %s after 30s (log %s)", socket, logFile.Name())
		}
	}
}

// peerStopGrace bounds a peer's exit after SIGTERM. stargz-snapshotter unmounts its layers and
// removes its snapshots and caches as it exits: after a run of the python workload that took
// 13-17 s on two loaded cores.
const peerStopGrace = time.Minute

// stop sends SIGTERM to the peer's PID, and SIGKILL after peerStopGrace.
func (p *peerProcess) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(peerStopGrace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("the peer (pid %d) ignored SIGTERM for %s and was killed", p.cmd.Process.Pid, peerStopGrace)
}
