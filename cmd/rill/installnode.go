package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/rillstream/rill/cmd/rill/internal/containerdconf"
	"github.com/rillstream/rill/config"
	"github.com/rillstream/rill/script"
)

// installOptions are install-node's flags. Every host path is joined to rootPrefix, so tests
// (and image builds) install into a directory.
type installOptions struct {
	rootPrefix       string
	from             string // directory holding rill-snapshotter and rill
	binDir           string
	unitDir          string
	rillConfig       string
	containerdConfig string
	configVersion    int
	address          string
	platform         string
	kubeletEndpoint  string
	kubeletEnvFile   string
	restart          bool
	systemctl        string
	dryRun           bool
	skipBinaries     bool
}

// runInstallNode installs rill on this node: binaries, unit, config, and rill's entries in
// containerd's config (and kubelet's image service endpoint when asked).
func runInstallNode(ctx context.Context, env *cliEnv, args []string) error {
	var o installOptions
	fs := flag.NewFlagSet("rill install-node", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	exe, _ := os.Executable()
	fs.StringVar(&o.rootPrefix, "root-prefix", "/", "the host's root: every path below is under it (a DaemonSet mounts the host at /host)")
	fs.StringVar(&o.from, "from", filepath.Dir(exe), "directory holding the rill-snapshotter and rill binaries to install")
	fs.BoolVar(&o.skipBinaries, "no-binaries", false, "do not install binaries (they are installed already)")
	fs.StringVar(&o.binDir, "bin-dir", "/usr/local/bin", "where the binaries go")
	fs.StringVar(&o.unitDir, "unit-dir", "/etc/systemd/system", "where rill-snapshotter.service goes")
	fs.StringVar(&o.rillConfig, "config", config.DefaultPath, "rill's config, written with every default when missing (an existing one is kept)")
	fs.StringVar(&o.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd's config, into which rill's entries are merged")
	fs.IntVar(&o.configVersion, "containerd-config-version", 3, "format of a containerd config written from nothing: 3 (containerd 2.x) or 2 (1.7)")
	fs.StringVar(&o.address, "address", config.DefaultAddress, "rill's socket, as containerd's proxy_plugins.rill.address")
	fs.StringVar(&o.platform, "platform", "linux/amd64", "the platform of the transfer service's unpack_config entry for rill")
	fs.StringVar(&o.kubeletEndpoint, "kubelet-image-service-endpoint", "", "set kubelet's --image-service-endpoint to this (e.g. unix:///run/rill/cri.sock) in --kubelet-env-file; empty: leave kubelet alone")
	fs.StringVar(&o.kubeletEnvFile, "kubelet-env-file", "/etc/default/kubelet", "the file whose KUBELET_EXTRA_ARGS kubelet's unit passes to kubelet (kubeadm: /etc/default/kubelet on Debian, /etc/sysconfig/kubelet on RHEL)")
	fs.BoolVar(&o.restart, "restart", false, "start rill-snapshotter, and restart what changed: rill-snapshotter (binaries, unit), containerd (its config), kubelet (its flags); without it nothing is started or restarted")
	fs.StringVar(&o.systemctl, "systemctl", "systemctl", "the systemctl command line to run with --restart (from a container: \"nsenter -t 1 -m -u -i -n -p -- systemctl\")")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would change, as diffs, and change nothing")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: rill install-node [flags]\n\nInstalls rill on this node: rill-snapshotter and rill, the systemd unit, /etc/rill/config.toml\n(kept if present), and rill's entries merged into containerd's config.toml (other settings and\ncomments kept; the old file saved beside it as config.toml.rill-TIME.bak). Running it again\nchanges nothing. containerd is restarted only with --restart.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	if o.configVersion != 2 && o.configVersion != 3 {
		return fmt.Errorf("--containerd-config-version %d: want 2 or 3: %w", o.configVersion, errUsage)
	}
	return installNode(ctx, env.stdout, o)
}

// installer writes files under a root prefix, or only describes them in a dry run.
type installer struct {
	o       installOptions
	w       io.Writer
	changed map[string]bool // what changed, by kind: "rill", "containerd", "kubelet"
}

func (in *installer) host(p string) string { return filepath.Join(in.o.rootPrefix, p) }

func installNode(ctx context.Context, w io.Writer, o installOptions) error {
	in := &installer{o: o, w: w, changed: map[string]bool{}}
	if o.dryRun {
		fmt.Fprintln(w, "dry run: nothing is written")
	}
	if !o.skipBinaries {
		for _, name := range []string{"rill-snapshotter", "rill"} {
			if err := in.binary(name); err != nil {
				return err
			}
		}
	}
	unit := strings.ReplaceAll(script.Unit, "/usr/local/bin/rill-snapshotter", filepath.Join(o.binDir, "rill-snapshotter"))
	unit = strings.ReplaceAll(unit, "--config "+config.DefaultPath, "--config "+o.rillConfig)
	if err := in.file(filepath.Join(o.unitDir, "rill-snapshotter.service"), unit, 0o644, "rill", false); err != nil {
		return err
	}
	if err := in.keepOrWrite(o.rillConfig, rillConfig(o)); err != nil {
		return err
	}
	if err := in.containerd(); err != nil {
		return err
	}
	if o.kubeletEndpoint != "" {
		if err := in.kubelet(); err != nil {
			return err
		}
	}
	if o.dryRun {
		return nil
	}
	if err := os.MkdirAll(in.host(config.DefaultRoot), 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	return in.restartServices(ctx)
}

// rillConfig is the default config, with the socket install-node was told.
func rillConfig(o installOptions) string {
	if o.address == config.DefaultAddress {
		return script.Config
	}
	return fmt.Sprintf("# address set by rill install-node --address\naddress = %q\n\n", o.address) + script.Config
}

func (in *installer) binary(name string) error {
	src := filepath.Join(in.o.from, name)
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("binary %s (--from names the directory holding rill-snapshotter and rill; make install-node builds them): %w", name, err)
	}
	dst := in.host(filepath.Join(in.o.binDir, name))
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, b) {
		fmt.Fprintf(in.w, "unchanged %s\n", dst)
		return nil
	}
	fmt.Fprintf(in.w, "install %s -> %s\n", src, dst)
	if in.o.dryRun {
		return nil
	}
	in.changed["rill"] = true
	return writeAtomic(dst, b, 0o755)
}

// file writes content at p (under the prefix) unless it holds it already; with backup, the old
// content is kept beside it first.
func (in *installer) file(p, content string, mode fs.FileMode, kind string, backup bool) error {
	dst := in.host(p)
	cur, err := os.ReadFile(dst)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err == nil && string(cur) == content {
		fmt.Fprintf(in.w, "unchanged %s\n", dst)
		return nil
	}
	if in.o.dryRun {
		writeDiff(in.w, dst, dst+" (new)", string(cur), content)
		return nil
	}
	if backup && err == nil {
		bak := fmt.Sprintf("%s.rill-%s.bak", dst, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.WriteFile(bak, cur, 0o644); err != nil {
			return fmt.Errorf("backup of %s: %w", dst, err)
		}
		fmt.Fprintf(in.w, "saved %s\n", bak)
	}
	if err := writeAtomic(dst, []byte(content), mode); err != nil {
		return err
	}
	fmt.Fprintf(in.w, "wrote %s\n", dst)
	in.changed[kind] = true
	return nil
}

func (in *installer) keepOrWrite(p, content string) error {
	if _, err := os.Stat(in.host(p)); err == nil {
		fmt.Fprintf(in.w, "kept existing %s\n", in.host(p))
		return nil
	}
	return in.file(p, content, 0o644, "rill", false)
}

func (in *installer) containerd() error {
	p := in.host(in.o.containerdConfig)
	cur, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("containerd config: %w", err)
	}
	merged, changes, err := containerdconf.Merge(cur, containerdconf.Options{Address: in.o.address, Platform: in.o.platform, Version: in.o.configVersion})
	if err != nil {
		return fmt.Errorf("containerd config %s: %w", p, err)
	}
	for _, c := range changes {
		fmt.Fprintf(in.w, "containerd config: %s\n", c)
	}
	if len(changes) == 0 {
		fmt.Fprintf(in.w, "unchanged %s (rill's entries are in it)\n", p)
		return nil
	}
	return in.file(in.o.containerdConfig, string(merged), 0o644, "containerd", true)
}

// imageEndpointFlag matches kubelet's --image-service-endpoint flag in an argument list.
var imageEndpointFlag = regexp.MustCompile(`\s*--image-service-endpoint(=|\s+)\S+`)

// kubelet sets --image-service-endpoint in KUBELET_EXTRA_ARGS of the kubelet env file.
func (in *installer) kubelet() error {
	p := in.host(in.o.kubeletEnvFile)
	cur, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kubelet env file: %w", err)
	}
	return in.file(in.o.kubeletEnvFile, setKubeletEndpoint(string(cur), in.o.kubeletEndpoint), 0o644, "kubelet", true)
}

// setKubeletEndpoint returns env (a KEY=value file) with --image-service-endpoint=ep in
// KUBELET_EXTRA_ARGS, replacing an endpoint named before and keeping the other flags and lines.
func setKubeletEndpoint(env, ep string) string {
	flagText := "--image-service-endpoint=" + ep
	lines := splitLines(env)
	for i, l := range lines {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "KUBELET_EXTRA_ARGS=")
		if !ok {
			continue
		}
		quote := ""
		if len(rest) >= 2 && (rest[0] == '"' || rest[0] == '\'') && rest[len(rest)-1] == rest[0] {
			quote, rest = rest[:1], rest[1:len(rest)-1]
		}
		args := strings.TrimSpace(imageEndpointFlag.ReplaceAllString(rest, ""))
		if args != "" {
			args += " "
		}
		if quote == "" && strings.ContainsAny(args, " ") {
			quote = `"`
		}
		lines[i] = "KUBELET_EXTRA_ARGS=" + quote + args + flagText + quote
		return strings.Join(lines, "\n") + "\n"
	}
	return strings.Join(append(lines, "KUBELET_EXTRA_ARGS="+flagText), "\n") + "\n"
}

func (in *installer) restartServices(ctx context.Context) error {
	if !in.o.restart {
		if len(in.changed) > 0 {
			fmt.Fprintln(in.w, "restart to apply (or run again with --restart): systemctl daemon-reload && systemctl enable --now rill-snapshotter && systemctl restart containerd")
		}
		return nil
	}
	// A run that changed nothing restarts nothing: it only makes sure rill runs (a restart
	// of rill-snapshotter ends the FUSE mounts of running containers, README: Operate).
	var steps [][]string
	if len(in.changed) > 0 {
		steps = append(steps, []string{"daemon-reload"})
	}
	steps = append(steps, []string{"enable", "--now", "rill-snapshotter"})
	if in.changed["rill"] {
		steps = append(steps, []string{"restart", "rill-snapshotter"})
	}
	if in.changed["containerd"] {
		steps = append(steps, []string{"restart", "containerd"})
	}
	if in.changed["kubelet"] {
		steps = append(steps, []string{"restart", "kubelet"})
	}
	systemctl := strings.Fields(in.o.systemctl)
	if len(systemctl) == 0 {
		return fmt.Errorf("--systemctl is empty: %w", errUsage)
	}
	for _, s := range steps {
		fmt.Fprintf(in.w, "%s %s\n", in.o.systemctl, strings.Join(s, " "))
		out, err := exec.CommandContext(ctx, systemctl[0], append(systemctl[1:], s...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", in.o.systemctl, strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// writeAtomic writes b to p through a temporary file in its directory and a rename.
func writeAtomic(p string, b []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}
