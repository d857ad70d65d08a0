package harness

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// CRINamespace is the containerd namespace of the CRI plugin (and of crictl's images).
const CRINamespace = "k8s.io"

// Containerd is a private containerd: its root, state, sockets and config live in a temporary
// directory, it loads no other config (imports = []), uses rill as its CRI snapshotter, and
// pulls from the harness's registry over plain HTTP.
type Containerd struct {
	dir     string
	socket  string
	config  string
	logPath string
	proc    *Process
}

// containerdConfig is containerd's config (version 3, which containerd 2.x migrates). Its
// arguments, in order: root, state, grpc socket, ttrpc socket, rill's socket, more proxy
// plugins, the opt dir, the CRI snapshotter, the sandbox image, the certs.d directory, the CNI
// bin dir, the CNI conf dir and more unpack configs.
const containerdConfig = `version = 3
root = %q
state = %q
imports = []
# NRI listens on a fixed host-wide socket; this private instance must not take it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[proxy_plugins.rill]
  type = "snapshot"
  address = %q
  # Without this export, pulls through the transfer service (CRI, ctr) do not pass the
  # containerd.io/snapshot/cri.* labels to the snapshotter.
  [proxy_plugins.rill.exports]
    enable_remote_snapshot_annotations = "true"
%s
[plugins.'io.containerd.internal.v1.opt']
  path = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = %q
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q

[plugins.'io.containerd.cri.v1.runtime']
  # This sandbox lacks CAP_SYS_RESOURCE: without it pod sandboxes fail on oom_score_adj.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q

# Pulls go through the transfer service, which unpacks only for the snapshotters listed here.
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "rill"
  differ = "walking"

# arm64 content cannot run here, but unpacks: the tests check that rill pulls it in full.
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/arm64"
  snapshotter = "rill"
  differ = "walking"
%s`

// proxyPluginConfig declares one more proxy snapshotter: its name (twice) and socket.
const proxyPluginConfig = `
[proxy_plugins.%[1]s]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]s.exports]
    enable_remote_snapshot_annotations = "true"
`

// unpackConfig lets the transfer service unpack for one more snapshotter.
const unpackConfig = `
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = %q
  differ = "walking"
`

// containerdOptions are what a harness may change in containerd's config.
type containerdOptions struct {
	rillSocket, certsDir, sandboxImage string
	// criSnapshotter is the snapshotter CRI pulls into ("" means rill).
	criSnapshotter string
	// proxySnapshotters are more proxy snapshotters, name → socket.
	proxySnapshotters map[string]string
}

// extraConfig returns the proxy_plugins and unpack_config sections beyond rill's.
func (o containerdOptions) extraConfig() (plugins, unpack string) {
	names := slices.Sorted(maps.Keys(o.proxySnapshotters))
	for _, name := range names {
		plugins += fmt.Sprintf(proxyPluginConfig, name, o.proxySnapshotters[name])
	}
	if o.criSnapshotter != "" && o.criSnapshotter != SnapshotterName {
		unpack += fmt.Sprintf(unpackConfig, o.criSnapshotter)
	}
	return plugins, unpack
}

// hostsConfig is the certs.d/<host>/hosts.toml of the registry: plain HTTP on loopback.
const hostsConfig = `server = "http://%[1]s"

[host."http://%[1]s"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
`

// writeHostsConfig writes certsDir/host/hosts.toml for a plain-HTTP registry on loopback.
func writeHostsConfig(certsDir, host string) error {
	dir := filepath.Join(certsDir, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), fmt.Appendf(nil, hostsConfig, host), 0o644); err != nil {
		return fmt.Errorf("writing the hosts.toml of %s: %w", host, err)
	}
	return nil
}

// startContainerd writes the config under dir and starts containerd, logging into logDir.
func startContainerd(ctx context.Context, dir, logDir string, opts containerdOptions) (*Containerd, error) {
	bin, err := LookTool("containerd")
	if err != nil {
		return nil, err
	}
	c := &Containerd{
		dir:     dir,
		socket:  filepath.Join(dir, "containerd.sock"),
		config:  filepath.Join(dir, "config.toml"),
		logPath: filepath.Join(logDir, "containerd.log"),
	}
	dirs := map[string]string{
		"root": filepath.Join(dir, "root"), "state": filepath.Join(dir, "state"),
		"opt": filepath.Join(dir, "opt"), "cni-bin": filepath.Join(dir, "cni", "bin"),
		"cni-conf": filepath.Join(dir, "cni", "conf"),
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating containerd's directories: %w", err)
		}
	}
	criSnapshotter := cmp.Or(opts.criSnapshotter, SnapshotterName)
	plugins, unpack := opts.extraConfig()
	config := fmt.Appendf(nil, containerdConfig, dirs["root"], dirs["state"], c.socket, c.socket+".ttrpc",
		opts.rillSocket, plugins, dirs["opt"], criSnapshotter, opts.sandboxImage, opts.certsDir,
		dirs["cni-bin"], dirs["cni-conf"], unpack)
	if err := os.WriteFile(c.config, config, 0o644); err != nil {
		return nil, fmt.Errorf("writing containerd's config: %w", err)
	}
	env := append(os.Environ(), "PATH="+toolPath())
	c.proc, err = startProcess("containerd", c.logPath, env, bin, "--config", c.config, "--log-level", "debug")
	if err != nil {
		return nil, err
	}
	if err := c.proc.waitReady(ctx, 60*time.Second, c.dial); err != nil {
		_ = c.proc.Stop(ctx, 10*time.Second)
		return nil, err
	}
	return c, nil
}

// Socket returns containerd's gRPC socket.
func (c *Containerd) Socket() string { return c.socket }

// Dir returns the directory that holds containerd's root, state and config.
func (c *Containerd) Dir() string { return c.dir }

// Process returns the containerd process.
func (c *Containerd) Process() *Process { return c.proc }

// Stop stops containerd (SIGTERM, then SIGKILL after a grace period).
func (c *Containerd) Stop(ctx context.Context) error { return c.proc.Stop(ctx, 30*time.Second) }

func (c *Containerd) dial(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return err
	}
	return conn.Close()
}

// WaitSnapshotter waits until containerd reaches the proxy snapshotter name again. After the
// snapshotter restarts, containerd's connection to it reconnects with a backoff (up to a few
// seconds); until then containerd fails every call that needs the snapshotter, as a node would.
// The probe lists the snapshotter's snapshots and stats one (containerd's metadata answers a
// missing key without asking the snapshotter, so a made-up key proves nothing).
func (c *Containerd) WaitSnapshotter(ctx context.Context, name string, timeout time.Duration) error {
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to containerd at %s: %w", c.socket, err)
	}
	defer conn.Close()
	client := snapshotsapi.NewSnapshotsClient(conn)
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	deadline := time.Now().Add(timeout)
	for {
		key, err := anySnapshot(ctx, client, name)
		if err == nil && key == "" {
			return nil
		}
		if err == nil {
			_, err = client.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: name, Key: key})
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not reach snapshotter %q within %s: %w", name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// anySnapshot returns the key of one snapshot containerd holds for snapshotter name ("" if none).
func anySnapshot(ctx context.Context, client snapshotsapi.SnapshotsClient, name string) (string, error) {
	stream, err := client.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: name})
	if err != nil {
		return "", fmt.Errorf("listing the snapshots of %q in containerd: %w", name, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", nil
			}
			return "", fmt.Errorf("listing the snapshots of %q in containerd: %w", name, err)
		}
		if infos := resp.GetInfo(); len(infos) > 0 {
			return infos[0].GetName(), nil
		}
	}
}

// ContentLabels returns the labels containerd keeps on the blob dgst in namespace ns. After an
// unpack, the image config's labels name the snapshot of the top layer per snapshotter
// ("containerd.io/gc.ref.snapshot.<snapshotter>" = chain ID).
func (c *Containerd) ContentLabels(ctx context.Context, ns, dgst string) (map[string]string, error) {
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd at %s: %w", c.socket, err)
	}
	defer conn.Close()
	resp, err := contentapi.NewContentClient(conn).Info(namespaces.WithNamespace(ctx, ns),
		&contentapi.InfoRequest{Digest: dgst})
	if err != nil {
		return nil, fmt.Errorf("asking containerd for the content info of %s in namespace %s: %w", dgst, ns, err)
	}
	return resp.GetInfo().GetLabels(), nil
}
