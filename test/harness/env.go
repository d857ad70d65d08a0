package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options configure Start.
type Options struct {
	// Logf receives progress lines and, when Close is told the run failed, the tails of the
	// daemons' logs (testing.T.Logf fits). Nil discards them.
	Logf func(format string, args ...any)
	// TempDir is where the harness creates its directory; "" means os.TempDir().
	TempDir string

	// Registry, when set, is a registry already running (see StartRegistry) that the Env uses
	// instead of starting its own; Close leaves it running. Benchmarks keep one registry (and
	// what they pushed to it) across many fresh Envs.
	Registry *Registry
	// RegistryHosts are more host:port names of the registry (a proxy or an emulated link in
	// front of it, on loopback, plain HTTP): containerd and rill-snapshotter get a hosts.toml
	// for each, as for the registry itself.
	RegistryHosts []string
	// CRISnapshotter is the snapshotter CRI pulls and runs pods with: "" means rill; containerd's
	// built-in "overlayfs" makes an ordinary full pull; the name of one of ProxySnapshotters
	// makes CRI use that one.
	CRISnapshotter string
	// ProxySnapshotters declares more proxy snapshotters in containerd (name → unix socket),
	// already running: other remote snapshotters to compare with rill.
	ProxySnapshotters map[string]string
	// MetricsAddress, when set, turns on rill-snapshotter's Prometheus endpoint there
	// ("127.0.0.1:PORT").
	MetricsAddress string
	// SnapshotterStreaming are extra lines of rill-snapshotter's [streaming] table (TOML), as
	// Snapshotter.SetStreaming takes them.
	SnapshotterStreaming []string
	// SnapshotterConfig is more TOML appended to rill-snapshotter's config: tables of its own
	// (such as [profile_reports]).
	SnapshotterConfig string
}

// Env is a running set of registry, rill-snapshotter and containerd, all below Dir.
type Env struct {
	Dir          string // everything the harness makes lives below it
	RepoRoot     string // the rill module
	Registry     *Registry
	Snapshotter  *Snapshotter
	Containerd   *Containerd
	CRI          *CRI
	Ctr          *Ctr
	SandboxImage *PushedImage // the pause image pinned for pod sandboxes
	// Proxy is a byte-counting proxy in front of the registry: pull through Proxy.Host() to
	// measure what a node downloads.
	Proxy *Proxy
	// CertsDir is the certs.d directory (hosts.toml per registry host) that containerd and
	// rill-snapshotter share.
	CertsDir string

	logDir string
	logf   func(format string, args ...any)
	// ownRegistry is true when Start started the registry (and Close stops it).
	ownRegistry bool
	unlock      func() // releases the one-harness-per-machine lock
	closed      bool
}

// Start builds rill-snapshotter and the pause image from this repository, then starts the
// registry, rill-snapshotter and containerd, and waits until CRI answers. On failure it stops
// whatever it started.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the harness must run as root (containerd, runc and overlay mounts need it)")
	}
	if err := CheckTools(requiredTools()...); err != nil {
		return nil, err
	}
	repoRoot, err := RepoRoot(ctx)
	if err != nil {
		return nil, err
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	unlock, err := lockInstance(ctx, 30*time.Minute, logf)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(opts.TempDir, "rill-e2e-")
	if err != nil {
		unlock()
		return nil, fmt.Errorf("creating the harness directory: %w", err)
	}
	e := &Env{Dir: dir, RepoRoot: repoRoot, logDir: filepath.Join(dir, "logs"), logf: logf, unlock: unlock}
	defer func() {
		if err != nil { // an interrupt is no failure of the daemons: keep no logs then
			if cerr := e.Close(context.WithoutCancel(ctx), ctx.Err() == nil); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	for _, d := range []string{e.logDir, filepath.Join(dir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return e, fmt.Errorf("creating %s: %w", d, err)
		}
	}

	began := time.Now()
	rillBin := filepath.Join(dir, "bin", "rill-snapshotter")
	var (
		wg               sync.WaitGroup
		buildErr, imgErr error
		sandbox          ImageSpec
	)
	wg.Go(func() {
		if buildErr = BuildGo(ctx, repoRoot, "./cmd/rill-snapshotter", rillBin, false); buildErr != nil {
			buildErr = fmt.Errorf("building rill-snapshotter: %w", buildErr)
		}
	})
	wg.Go(func() { sandbox, imgErr = buildSandboxImage(ctx, repoRoot, filepath.Join(dir, "bin")) })
	wg.Wait()
	if err := errors.Join(buildErr, imgErr); err != nil {
		return e, err
	}
	e.logf("built rill-snapshotter and the pause image in %s", time.Since(began).Round(time.Millisecond))

	if opts.Registry != nil {
		e.Registry = opts.Registry
		e.logf("using the registry on %s (pid %d)", e.Registry.Host(), e.Registry.Process().PID())
	} else {
		if e.Registry, err = startRegistry(ctx, filepath.Join(dir, "registry"), e.logDir); err != nil {
			return e, err
		}
		e.ownRegistry = true
		e.logf("registry listening on %s (pid %d)", e.Registry.Host(), e.Registry.Process().PID())
	}
	if e.SandboxImage, err = Push(ctx, e.Registry.Host()+"/"+SandboxRepository, sandbox); err != nil {
		return e, fmt.Errorf("pushing the pause image: %w", err)
	}
	if e.Proxy, err = startProxy(e.Registry.Host()); err != nil {
		return e, err
	}
	e.CertsDir = filepath.Join(dir, "certs.d")
	for _, host := range append([]string{e.Registry.Host(), e.Proxy.Host()}, opts.RegistryHosts...) {
		if err := writeHostsConfig(e.CertsDir, host); err != nil {
			return e, err
		}
	}

	// The daemon keeps its FUSE connections in an fd-holder of its own (no NOTIFY_SOCKET here:
	// fdstore mode auto uses the holder), whose socket lives in the harness's directory.
	holderSocket := filepath.Join(dir, "fdstore.sock")
	if e.Snapshotter, err = newSnapshotter(rillBin, filepath.Join(dir, "rill"), e.logDir, e.CertsDir, opts.MetricsAddress, holderSocket); err != nil {
		return e, err
	}
	e.Snapshotter.extra = opts.SnapshotterConfig
	if err := e.Snapshotter.SetStreaming(opts.SnapshotterStreaming...); err != nil {
		return e, err
	}
	if err := e.Snapshotter.Start(ctx); err != nil {
		return e, fmt.Errorf("starting rill-snapshotter: %w", err)
	}
	e.logf("rill-snapshotter serving %s (pid %d)", e.Snapshotter.Socket(), e.Snapshotter.Process().PID())

	e.Containerd, err = startContainerd(ctx, filepath.Join(dir, "containerd"), e.logDir, containerdOptions{
		rillSocket: e.Snapshotter.Socket(), certsDir: e.CertsDir, sandboxImage: e.SandboxImage.Ref,
		criSnapshotter: opts.CRISnapshotter, proxySnapshotters: opts.ProxySnapshotters,
	})
	if err != nil {
		return e, fmt.Errorf("starting containerd: %w", err)
	}
	if e.CRI, err = newCRI(filepath.Join(dir, "cri"), e.Containerd.Socket()); err != nil {
		return e, err
	}
	if e.Ctr, err = newCtr(e.Containerd.Socket()); err != nil {
		return e, err
	}
	if err := e.CRI.waitReady(ctx, 60*time.Second); err != nil {
		return e, fmt.Errorf("%w; containerd's log %s ends with:\n%s", err, e.Containerd.logPath, tailFile(e.Containerd.logPath, 30))
	}
	// Pull the pinned sandbox image now, so that the first pod does not change what rill holds.
	if _, err := e.CRI.Pull(ctx, e.SandboxImage.Ref); err != nil {
		return e, fmt.Errorf("pulling the pod sandbox image: %w", err)
	}
	e.logf("containerd serving %s (pid %d), CRI ready; everything up in %s",
		e.Containerd.Socket(), e.Containerd.Process().PID(), time.Since(began).Round(time.Millisecond))
	return e, nil
}

// StartSnapshotter starts rill-snapshotter again (after Stop or Kill) and waits until
// containerd reaches it, so the next CRI call does not fail on containerd's reconnect backoff.
func (e *Env) StartSnapshotter(ctx context.Context) error {
	if err := e.Snapshotter.Start(ctx); err != nil {
		return err
	}
	return e.Containerd.WaitSnapshotter(ctx, SnapshotterName, 30*time.Second)
}

// StartFakeSystemd starts a fake systemd (FakeSystemd) below Dir, its log beside the daemons'
// logs, and makes every later Start of rill-snapshotter go through it: with NOTIFY_SOCKET, the
// descriptors it keeps passed as LISTEN_FDS, and ready once READY=1 came. The running daemon is
// not touched: stop it first (and its fd-holder, StopHolder, whose connections the daemon
// started by the fake does not get), and set `mode = "systemd"` with SetFDStore to be sure the
// daemon uses the fake's store. Close stops the daemon, unmounts, then closes the fake and what
// it keeps.
func (e *Env) StartFakeSystemd() (*FakeSystemd, error) {
	if e.Snapshotter.manager != nil {
		return nil, errors.New("rill-snapshotter already runs under a fake systemd")
	}
	m, err := StartFakeSystemd(filepath.Join(e.Dir, "systemd"), filepath.Join(e.logDir, "fake-systemd.log"), 0)
	if err != nil {
		return nil, err
	}
	e.Snapshotter.manager = m
	e.logf("fake systemd listening on NOTIFY_SOCKET=%s", m.NotifySocket())
	return m, nil
}

// RestartHow says how RestartSnapshotter ends the running daemon.
type RestartHow int

const (
	// RestartTerm sends SIGTERM and requires the daemon to exit 0 in time (a stop, as
	// `systemctl restart` does).
	RestartTerm RestartHow = iota
	// RestartKill sends SIGKILL (a crash).
	RestartKill
)

func (h RestartHow) String() string {
	switch h {
	case RestartTerm:
		return "SIGTERM"
	case RestartKill:
		return "SIGKILL"
	}
	return fmt.Sprintf("RestartHow(%d)", int(h))
}

// RestartSnapshotter ends the running rill-snapshotter (how) and starts it again, from
// Snapshotter.Binary() (see SetBinary for an upgrade), on the same root, socket, config and
// fd-holder; it returns once containerd reaches the new daemon. Containers keep running
// throughout: nothing else is touched.
func (e *Env) RestartSnapshotter(ctx context.Context, how RestartHow) error {
	switch how {
	case RestartTerm:
		if err := e.Snapshotter.Stop(ctx); err != nil {
			return fmt.Errorf("stopping rill-snapshotter with SIGTERM (it must exit 0): %w", err)
		}
	case RestartKill:
		if err := e.Snapshotter.Kill(ctx); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown restart %v", how)
	}
	if err := e.StartSnapshotter(ctx); err != nil {
		return fmt.Errorf("starting rill-snapshotter (%s) after %s: %w", e.Snapshotter.Binary(), how, err)
	}
	return nil
}

// BuildSnapshotter builds rill-snapshotter afresh from the repository (`go build
// ./cmd/rill-snapshotter`, its version set to name so that the binary differs from the running
// one) and copies it to a new path below the harness's directory, which it returns: the binary
// of an upgrade, for Snapshotter.SetBinary.
func (e *Env) BuildSnapshotter(ctx context.Context, name string) (string, error) {
	buildDir, err := os.MkdirTemp(filepath.Join(e.Dir, "bin"), "build-")
	if err != nil {
		return "", err
	}
	built := filepath.Join(buildDir, "rill-snapshotter")
	if err := buildGo(ctx, e.RepoRoot, "./cmd/rill-snapshotter", built, false, "-ldflags", "-X main.version="+name); err != nil {
		return "", fmt.Errorf("building rill-snapshotter %s: %w", name, err)
	}
	dst := filepath.Join(e.Dir, "bin", name, "rill-snapshotter")
	if err := copyExecutable(built, dst); err != nil {
		return "", err
	}
	if err := os.RemoveAll(buildDir); err != nil {
		return "", err
	}
	return dst, nil
}

// copyExecutable copies the file src to dst (mode 0755), creating dst's directory.
func copyExecutable(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return nil
}

// LogDir returns the directory of the daemons' logs.
func (e *Env) LogDir() string { return e.logDir }

// Close stops everything Start started, by PID and in order, even after a failure: CRI pods and
// containers, ctr tasks, leftover runc containers and shims of this containerd, containerd,
// rill-snapshotter, the registry; then it unmounts whatever is mounted below Dir, closes the
// fake systemd (StartFakeSystemd) and what it keeps, stops the fd-holder the daemon started (by
// the PID in its pid file: SIGTERM, SIGKILL after 10 s) and removes Dir.
//
// It returns an error for anything that was not clean: a daemon that did not exit 0 on SIGTERM
// (rill-snapshotter, containerd, the fd-holder), containers, shims or mounts that outlived
// their owners (FUSE mounts whose connection the fd-holder or the fake systemd keeps are theirs
// until they stop, by design: they are unmounted before). When
// failed is true or Close finds a problem, it logs the tails of the daemons' logs and keeps the
// logs in a directory it names.
func (e *Env) Close(ctx context.Context, failed bool) error {
	if e.closed {
		return nil
	}
	e.closed = true
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()

	var errs []error
	containerdUp := e.Containerd != nil && !e.Containerd.proc.Exited()
	if containerdUp && e.CRI != nil {
		if err := e.CRI.removeAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if containerdUp && e.Ctr != nil {
		if err := e.Ctr.removeAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.Containerd != nil {
		if err := e.Containerd.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping containerd: %w", err))
		}
		ids, err := killRuncContainers(ctx, e.Dir)
		if len(ids) > 0 {
			errs = append(errs, fmt.Errorf("runc containers left running after containerd stopped: %v (killed)", ids))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing leftover runc containers: %w", err))
		}
		// A shim whose task was just deleted may take a moment to exit on its own.
		pids, err := waitShimsGone(e.Containerd.Socket(), 5*time.Second)
		if err != nil {
			errs = append(errs, err)
		}
		if len(pids) > 0 {
			errs = append(errs, fmt.Errorf("containerd shims left running after containerd stopped: pids %v (killed)", pids))
			if err := killPIDs(pids, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if e.Snapshotter != nil {
		if err := e.Snapshotter.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping rill-snapshotter: %w", err))
		}
	}
	if e.Proxy != nil {
		if err := e.Proxy.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the proxy: %w", err))
		}
	}
	if e.Registry != nil && e.ownRegistry {
		_ = e.Registry.Stop(ctx)
	}
	for _, p := range e.Processes() {
		if !p.Exited() {
			errs = append(errs, fmt.Errorf("%s (pid %d) is still running", p.name, p.PID()))
		}
	}
	holderPID := 0
	var manager *FakeSystemd
	if e.Snapshotter != nil {
		holderPID, _ = e.Snapshotter.HolderPID()
		manager = e.Snapshotter.manager
	}
	mounts, err := mountsUnder(e.Dir)
	if holderPID != 0 || manager != nil {
		// What the fd-holder (or the fake systemd) keeps outlives the daemon: its FUSE mounts
		// are not left over.
		mounts = slices.DeleteFunc(mounts, func(m mount) bool { return strings.HasPrefix(m.fstype, "fuse") })
	}
	if err != nil || len(mounts) > 0 {
		errs = append(errs, fmt.Errorf("mounts left below %s after every process stopped: %v (%v)", e.Dir, mounts, err))
	}
	if err := UnmountAll(e.Dir); err != nil {
		errs = append(errs, err)
	}
	if manager != nil {
		if err := manager.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the fake systemd: %w", err))
		}
	}
	if e.Snapshotter != nil {
		if pid, err := e.Snapshotter.stopHolder(ctx, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stopping the fd-holder: %w", err))
		} else if pid != 0 {
			e.logf("stopped the fd-holder (pid %d)", pid)
		}
	}

	if failed || len(errs) > 0 {
		e.reportLogs()
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", e.Dir, err))
	}
	e.unlock()
	return errors.Join(errs...)
}

// Processes returns the daemons the harness started (registry unless given in Options,
// rill-snapshotter, containerd).
func (e *Env) Processes() []*Process {
	var ps []*Process
	if e.Registry != nil && e.ownRegistry {
		ps = append(ps, e.Registry.proc)
	}
	if e.Snapshotter != nil && e.Snapshotter.proc != nil {
		ps = append(ps, e.Snapshotter.proc)
	}
	if e.Containerd != nil {
		ps = append(ps, e.Containerd.proc)
	}
	return ps
}

// reportLogs logs the tails of the daemons' logs and copies the logs to a directory that Close
// does not remove.
func (e *Env) reportLogs() {
	logs, err := os.ReadDir(e.logDir)
	if err != nil {
		e.logf("no daemon logs to report: %v", err)
		return
	}
	kept, err := os.MkdirTemp(filepath.Dir(e.Dir), "rill-e2e-logs-")
	if err != nil {
		e.logf("cannot keep the daemon logs: %v", err)
	}
	for _, l := range logs {
		src := filepath.Join(e.logDir, l.Name())
		e.logf("----- last lines of %s -----\n%s", l.Name(), tailFile(src, 60))
		if kept == "" {
			continue
		}
		if data, err := os.ReadFile(src); err == nil {
			_ = os.WriteFile(filepath.Join(kept, l.Name()), data, 0o644)
		}
	}
	if e.Snapshotter != nil {
		holderLog := e.Snapshotter.HolderLogPath()
		if data, err := os.ReadFile(holderLog); err == nil {
			e.logf("----- last lines of %s -----\n%s", filepath.Base(holderLog), tailFile(holderLog, 60))
			if kept != "" {
				_ = os.WriteFile(filepath.Join(kept, "fd-holder.log"), data, 0o644)
			}
		}
	}
	if kept != "" {
		e.logf("the full logs of registry, rill-snapshotter, containerd and the fd-holder are kept in %s", kept)
	}
}
