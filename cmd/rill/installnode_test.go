package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rillstream/rill/cmd/rill/internal/containerdconf"
)

// nodeRoot makes a host root with an existing containerd config and binaries to install.
func nodeRoot(t *testing.T, containerdConfig string) (root, from string) {
	t.Helper()
	root, from = t.TempDir(), t.TempDir()
	for _, name := range []string{"rill-snapshotter", "rill"} {
		if err := os.WriteFile(filepath.Join(from, name), []byte("#!/bin/sh\necho "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if containerdConfig != "" {
		if err := os.MkdirAll(filepath.Join(root, "etc/containerd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/containerd/config.toml"), []byte(containerdConfig), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, from
}

func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), code
}

const nodeContainerdConfig = `# the node's containerd config
version = 3
root = '/var/lib/containerd'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs' # default
  max_concurrent_downloads = 3
`

func backups(t *testing.T, root string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(root, "etc/containerd/config.toml.rill-*.bak"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestInstallNode(t *testing.T) {
	root, from := nodeRoot(t, nodeContainerdConfig)
	calls := filepath.Join(t.TempDir(), "systemctl.log")
	systemctl := filepath.Join(t.TempDir(), "systemctl")
	if err := os.WriteFile(systemctl, []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"install-node", "--root-prefix", root, "--from", from, "--systemctl", systemctl,
		"--kubelet-image-service-endpoint", "unix:///run/rill/cri.sock"}

	// A dry run prints the diff and writes nothing.
	out, errOut, code := runCLI(t, append(args, "--dry-run", "--restart")...)
	if code != 0 {
		t.Fatalf("dry run: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"+[proxy_plugins.rill]", `-  snapshotter = 'overlayfs' # default`, `+  snapshotter = "rill" # default`, "+KUBELET_EXTRA_ARGS=--image-service-endpoint=unix:///run/rill/cri.sock"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml")); string(b) != nodeContainerdConfig {
		t.Error("dry run changed containerd's config")
	}
	if _, err := os.Stat(filepath.Join(root, "usr/local/bin/rill-snapshotter")); err == nil {
		t.Error("dry run installed a binary")
	}
	if _, err := os.Stat(calls); err == nil {
		t.Error("dry run ran systemctl")
	}

	// Without --restart nothing is restarted.
	if _, errOut, code := runCLI(t, args...); code != 0 {
		t.Fatalf("install: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(calls); err == nil {
		t.Error("install without --restart ran systemctl")
	}
	for _, p := range []string{"usr/local/bin/rill-snapshotter", "usr/local/bin/rill", "etc/systemd/system/rill-snapshotter.service", "etc/rill/config.toml"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "usr/local/bin/rill-snapshotter")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("daemon binary: %v %v", fi, err)
	}
	merged, err := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := containerdconf.Verify(merged, containerdconf.Options{Address: "/run/rill/rill.sock"}); err != nil {
		t.Errorf("merged config: %v\n%s", err, merged)
	}
	if !strings.Contains(string(merged), "# the node's containerd config") || !strings.Contains(string(merged), "max_concurrent_downloads = 3") {
		t.Errorf("merged config lost the node's settings:\n%s", merged)
	}
	bak := backups(t, root)
	if len(bak) != 1 {
		t.Fatalf("backups %v, want one", bak)
	}
	if b, _ := os.ReadFile(bak[0]); string(b) != nodeContainerdConfig {
		t.Errorf("backup holds %q", b)
	}
	if env, _ := os.ReadFile(filepath.Join(root, "etc/default/kubelet")); string(env) != "KUBELET_EXTRA_ARGS=--image-service-endpoint=unix:///run/rill/cri.sock\n" {
		t.Errorf("kubelet env file: %q", env)
	}

	// Again, with --restart: nothing changes, no backup, and nothing is restarted (rill is
	// started if it is not running).
	out, errOut, code = runCLI(t, append(args, "--restart")...)
	if code != 0 {
		t.Fatalf("second install: exit %d: %s", code, errOut)
	}
	if strings.Contains(out, "wrote") || strings.Contains(out, "install ") || len(backups(t, root)) != 1 {
		t.Errorf("second run changed something:\n%s", out)
	}
	if again, _ := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml")); string(again) != string(merged) {
		t.Error("second run rewrote containerd's config")
	}
	log, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(log); got != "enable --now rill-snapshotter\n" {
		t.Errorf("systemctl calls:\n%s", got)
	}
}

func TestInstallNodeRestartsContainerdWhenItsConfigChanged(t *testing.T) {
	root, from := nodeRoot(t, "")
	calls := filepath.Join(t.TempDir(), "systemctl.log")
	systemctl := filepath.Join(t.TempDir(), "systemctl")
	if err := os.WriteFile(systemctl, []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCLI(t, "install-node", "--root-prefix", root, "--from", from, "--systemctl", "/bin/sh "+systemctl, "--restart", "--containerd-config-version", "2"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	b, err := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := containerdconf.Verify(b, containerdconf.Options{Address: "/run/rill/rill.sock"}); err != nil || !strings.Contains(string(b), "version = 2") {
		t.Errorf("new 1.7 config: %v\n%s", err, b)
	}
	if len(backups(t, root)) != 0 {
		t.Error("a backup of a file that did not exist")
	}
	if log, _ := os.ReadFile(calls); string(log) != "daemon-reload\nenable --now rill-snapshotter\nrestart rill-snapshotter\nrestart containerd\n" {
		t.Errorf("containerd not restarted:\n%s", log)
	}
}

func TestInstallNodeRefusesAConfigItCannotMerge(t *testing.T) {
	root, from := nodeRoot(t, "version = 3\n[proxy_plugins]\nrill = { type = \"snapshot\", address = \"/x\" }\n")
	_, errOut, code := runCLI(t, "install-node", "--root-prefix", root, "--from", from)
	if code == 0 || !strings.Contains(errOut, "edit the file by hand") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if len(backups(t, root)) != 0 {
		t.Error("wrote a backup though nothing was merged")
	}
}

func TestSetKubeletEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "KUBELET_EXTRA_ARGS=--image-service-endpoint=unix:///r.sock\n"},
		{"KUBELET_EXTRA_ARGS=\n", "KUBELET_EXTRA_ARGS=--image-service-endpoint=unix:///r.sock\n"},
		{"# kubelet\nKUBELET_EXTRA_ARGS=--node-ip=10.0.0.1\n", "# kubelet\nKUBELET_EXTRA_ARGS=\"--node-ip=10.0.0.1 --image-service-endpoint=unix:///r.sock\"\n"},
		{"KUBELET_EXTRA_ARGS=\"--v=2 --image-service-endpoint unix:///old.sock --max-pods=50\"\n", "KUBELET_EXTRA_ARGS=\"--v=2 --max-pods=50 --image-service-endpoint=unix:///r.sock\"\n"},
	} {
		if got := setKubeletEndpoint(tc.in, "unix:///r.sock"); got != tc.want {
			t.Errorf("setKubeletEndpoint(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
