package harness

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// SnapshotterName is the name containerd knows rill by.
const SnapshotterName = "rill"

// Snapshotter is a rill-snapshotter daemon. Its root survives Stop and Restart.
type Snapshotter struct {
	bin     string
	dir     string
	root    string
	socket  string
	config  string
	logPath string
	proc    *Process

	certsDir       string
	metrics        string
	metricsAddress string
	streaming      []string // extra [streaming] lines (SetStreaming)
	credentials    []string // [credentials] lines (SetCredentials)
	fdstore        []string // more [fdstore] lines (SetFDStore)
	extra          string   // more tables (Options.SnapshotterConfig)

	// holderSocket is the fd-holder's socket: the daemon starts the holder (fdstore mode
	// auto without NOTIFY_SOCKET, so the holder is used) and it outlives the daemon.
	holderSocket string
	// manager, when set (Env.StartFakeSystemd), starts the daemon as systemd would.
	manager *FakeSystemd
}

const snapshotterConfig = `root = %q
address = %q

[log]
level = "debug"

[snapshotter]
async_remove = true

[streaming]
hosts_dir = %q
%s%s
[credentials]
%s
[fdstore]
holder_socket = %q
%s`

// streamingDefaults are [streaming] lines of the harness's config that SetStreaming can
// override, by key.
func streamingDefaults() []string {
	return []string{
		// Short, so that a test can use the profile its container's start recorded.
		`record_window = "5s"`,
		// Short, so that reads of a registry that is down fail fast in the tests.
		fmt.Sprintf(`read_timeout = "%s"`, DefaultReadTimeout),
	}
}

// DefaultReadTimeout is rill-snapshotter's streaming.read_timeout in the harness, unless
// SetStreaming sets another.
const DefaultReadTimeout = 5 * time.Second

// metricsConfig turns on rill-snapshotter's Prometheus endpoint at an address.
const metricsConfig = `
[metrics]
address = %q
`

// newSnapshotter prepares (but does not start) rill-snapshotter bin with its config, root and
// socket under dir, its log in logDir and its fd-holder's socket at holderSocket.
func newSnapshotter(bin, dir, logDir, certsDir, metricsAddress, holderSocket string) (*Snapshotter, error) {
	s := &Snapshotter{
		bin:          bin,
		dir:          dir,
		root:         filepath.Join(dir, "root"),
		socket:       filepath.Join(dir, "rill.sock"),
		config:       filepath.Join(dir, "config.toml"),
		logPath:      filepath.Join(logDir, "rill-snapshotter.log"),
		holderSocket: holderSocket,
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the snapshotter directory: %w", err)
	}
	metrics := ""
	if metricsAddress != "" {
		metrics = fmt.Sprintf(metricsConfig, metricsAddress)
	}
	s.certsDir, s.metrics, s.metricsAddress = certsDir, metrics, metricsAddress
	if err := s.writeConfig(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetStreaming replaces the extra lines of the config's [streaming] table (TOML, such as
// `trust = "referrers"`); they take effect at the next Start.
func (s *Snapshotter) SetStreaming(lines ...string) error {
	s.streaming = lines
	return s.writeConfig()
}

// SetCredentials replaces the lines of the config's [credentials] table (TOML, such as
// `containerd_address = "..."`); they take effect at the next Start.
func (s *Snapshotter) SetCredentials(lines ...string) error {
	s.credentials = lines
	return s.writeConfig()
}

// SetFDStore replaces the extra lines of the config's [fdstore] table (TOML, such as
// `mode = "off"`); holder_socket is always the harness's. They take effect at the next Start.
func (s *Snapshotter) SetFDStore(lines ...string) error {
	s.fdstore = lines
	return s.writeConfig()
}

// CRISocket is the socket of rill-snapshotter's CRI image-service proxy (its default place,
// beside the snapshots socket).
func (s *Snapshotter) CRISocket() string { return filepath.Join(s.dir, "cri.sock") }

func (s *Snapshotter) writeConfig() error {
	key := func(line string) string { k, _, _ := strings.Cut(line, "="); return strings.TrimSpace(k) }
	extra := ""
	for _, d := range streamingDefaults() {
		if !slices.ContainsFunc(s.streaming, func(l string) bool { return key(l) == key(d) }) {
			extra += d + "\n"
		}
	}
	for _, l := range s.streaming {
		extra += l + "\n"
	}
	creds := strings.Join(s.credentials, "\n") + "\n"
	fdstore := ""
	for _, l := range s.fdstore {
		fdstore += l + "\n"
	}
	config := fmt.Appendf(nil, snapshotterConfig, s.root, s.socket, s.certsDir, extra, s.metrics, creds, s.holderSocket, fdstore)
	if err := os.WriteFile(s.config, append(config, "\n"+s.extra...), 0o644); err != nil {
		return fmt.Errorf("writing the snapshotter config: %w", err)
	}
	return nil
}

// Start starts the daemon and waits until its socket accepts connections.
func (s *Snapshotter) Start(ctx context.Context) error {
	if s.proc != nil && !s.proc.Exited() {
		return fmt.Errorf("rill-snapshotter is already running (pid %d)", s.proc.PID())
	}
	args := []string{"--config", s.config, "--root", s.root, "--address", s.socket, "--log-level", "debug"}
	var (
		proc *Process
		err  error
	)
	if s.manager != nil {
		proc, err = s.manager.start(ctx, "rill-snapshotter", s.logPath, s.bin, args...)
	} else {
		proc, err = startProcess("rill-snapshotter", s.logPath, os.Environ(), s.bin, args...)
	}
	if err != nil {
		return err
	}
	s.proc = proc
	ready := s.dial
	if m := s.manager; m != nil { // Type=notify: started once it says READY=1
		ready = func(ctx context.Context) error {
			if err := s.dial(ctx); err != nil {
				return err
			}
			return m.readyErr(proc.PID())
		}
	}
	return proc.waitReady(ctx, 30*time.Second, ready)
}

// ServiceManager returns the fake systemd that starts the daemon (Env.StartFakeSystemd), or nil.
func (s *Snapshotter) ServiceManager() *FakeSystemd { return s.manager }

// Stop sends SIGTERM and waits for the daemon to exit; it fails unless the daemon exits 0 in time.
func (s *Snapshotter) Stop(ctx context.Context) error {
	if s.proc == nil {
		return nil
	}
	return s.proc.Stop(ctx, 30*time.Second)
}

// Kill kills the daemon with SIGKILL, as a crash would, and waits for it to be gone. Its FUSE
// mounts are left behind, disconnected.
func (s *Snapshotter) Kill(ctx context.Context) error {
	if s.proc == nil || s.proc.Exited() {
		return nil
	}
	if err := s.proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing rill-snapshotter: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !s.proc.Exited() {
		if time.Now().After(deadline) {
			return fmt.Errorf("rill-snapshotter (pid %d) survived SIGKILL for 30s", s.proc.PID())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// SetBinary makes the next Start run the rill-snapshotter binary at path (an upgrade: see
// Env.BuildSnapshotter); root, socket, config and fd-holder stay the same.
func (s *Snapshotter) SetBinary(path string) { s.bin = path }

// Binary is the rill-snapshotter binary the next Start runs.
func (s *Snapshotter) Binary() string { return s.bin }

// Restart stops the daemon and starts it again on the same root and socket.
func (s *Snapshotter) Restart(ctx context.Context) error {
	if err := s.Stop(ctx); err != nil {
		return fmt.Errorf("stopping rill-snapshotter for a restart: %w", err)
	}
	return s.Start(ctx)
}

// Process returns the running daemon (nil before Start).
func (s *Snapshotter) Process() *Process { return s.proc }

// Socket returns the daemon's unix socket.
func (s *Snapshotter) Socket() string { return s.socket }

// Root returns the daemon's state directory.
func (s *Snapshotter) Root() string { return s.root }

// LogPath returns the daemon's log file.
func (s *Snapshotter) LogPath() string { return s.logPath }

func (s *Snapshotter) dial(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", s.socket)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Snapshots asks the daemon itself (over its socket, as containerd does) for every snapshot in
// its metastore. The names are containerd's keys ("<namespace>/<id>/<name>").
func (s *Snapshotter) Snapshots(ctx context.Context) ([]snapshots.Info, error) {
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to rill-snapshotter at %s: %w", s.socket, err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), SnapshotterName)
	var infos []snapshots.Info
	err = sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		infos = append(infos, info)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the snapshots of rill-snapshotter (Walk on %s): %w", s.socket, err)
	}
	return infos, nil
}

// DiskUsage returns the bytes allocated below ROOT/snapshots, counting each inode once (as du).
func (s *Snapshotter) DiskUsage() (int64, error) {
	return diskUsage(filepath.Join(s.root, "snapshots"))
}

func diskUsage(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walk, or no snapshot yet
			}
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		if id := (inode{st.Dev, st.Ino}); !seen[id] {
			seen[id] = true
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring the disk usage of %s: %w", dir, err)
	}
	return total, nil
}

// CacheDir is rill-snapshotter's cache directory (root/cache).
func (s *Snapshotter) CacheDir() string { return filepath.Join(s.root, "cache") }

// MountCacheDisk mounts a tmpfs of size bytes over the cache directory: a small disk that
// fills up. The daemon must be stopped (it holds the cache open); UnmountCacheDisk, with the
// daemon stopped again, brings the directory's own content back.
func (s *Snapshotter) MountCacheDisk(size int64) error {
	if s.proc != nil && !s.proc.Exited() {
		return fmt.Errorf("rill-snapshotter (pid %d) runs: stop it before mounting over its cache", s.proc.PID())
	}
	dir := s.CacheDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the cache directory: %w", err)
	}
	if err := unix.Mount("rill-test-cache", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		return fmt.Errorf("mounting a %d-byte tmpfs over %s: %w", size, dir, err)
	}
	return nil
}

// UnmountCacheDisk unmounts what MountCacheDisk mounted; the daemon must be stopped.
func (s *Snapshotter) UnmountCacheDisk() error {
	if s.proc != nil && !s.proc.Exited() {
		return fmt.Errorf("rill-snapshotter (pid %d) runs: stop it before unmounting its cache", s.proc.PID())
	}
	if err := unix.Unmount(s.CacheDir(), 0); err != nil {
		return fmt.Errorf("unmounting the tmpfs over %s: %w", s.CacheDir(), err)
	}
	return nil
}
