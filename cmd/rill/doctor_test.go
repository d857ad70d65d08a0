package main

import (
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rillstream/rill/cmd/rill/internal/containerdconf"
)

// goodNode builds a host root on which every check passes: containerd's config with rill's
// entries, rill-snapshotter's sockets (0600 in a 0700 directory), /dev/fuse, and both state
// directories on one filesystem.
func goodNode(t *testing.T, version int) string {
	t.Helper()
	root := t.TempDir()
	merged, _, err := containerdconf.Merge(nil, containerdconf.Options{Address: "/run/rill/rill.sock", Platform: "linux/amd64", Version: version})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "etc/containerd/config.toml"), string(merged))
	for _, d := range []string{"var/lib/rill", "var/lib/containerd", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "run/rill"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"rill.sock", "status.sock"} {
		listenSocket(t, filepath.Join(root, "run/rill", s))
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("this machine has no /dev/fuse (script/setup-test-env.sh loads fuse): %v", err)
	}
	if err := os.Symlink("/dev/fuse", filepath.Join(root, "dev/fuse")); err != nil {
		t.Fatal(err)
	}
	return root
}

func listenSocket(t *testing.T, path string) {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func doctorOn(t *testing.T, root string, extra ...string) (int, string) {
	t.Helper()
	code, out, errOut := rill(t, append([]string{"doctor", "--root-prefix", root, "--no-containerd", "--kernel-release", "6.12.0-1-amd64"}, extra...)...)
	return code, out + errOut
}

func TestDoctorGoodNode(t *testing.T) {
	for _, v := range []int{2, 3} {
		root := goodNode(t, v)
		code, out := doctorOn(t, root)
		if code != 0 || strings.Contains(out, "PROBLEM") || strings.Contains(out, "WARN") || !strings.Contains(out, "0 problems, 0 warnings") {
			t.Errorf("version %d: exit %d:\n%s", v, code, out)
		}
	}
}

// Each broken configuration gives its finding and fix, and a non-zero exit.
func TestDoctorFindsEachMisconfiguration(t *testing.T) {
	edit := func(from, to string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			p := filepath.Join(root, "etc/containerd/config.toml")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), from) {
				t.Fatalf("config lacks %q:\n%s", from, b)
			}
			writeFile(t, p, strings.Replace(string(b), from, to, 1))
		}
	}
	for _, tc := range []struct {
		name    string
		version int
		breakIt func(t *testing.T, root string)
		want    []string // in the output
		exit    int
	}{
		{"no export", 3, edit(`enable_remote_snapshot_annotations = "true"`, `enable_remote_snapshot_annotations = "false"`),
			[]string{"PROBLEM labels export", "every layer is pulled in full", "fix: run rill install-node"}, 1},
		{"CRI snapshotter not rill", 3, edit(`snapshotter = "rill"`+"\n\n", `snapshotter = "overlayfs"`+"\n\n"),
			[]string{`PROBLEM CRI snapshotter: plugins.'io.containerd.cri.v1.images'.snapshotter is "overlayfs"`}, 1},
		{"no unpack_config", 3, edit(`snapshotter = "rill"`+"\n  differ", `snapshotter = "overlayfs"`+"\n  differ"),
			[]string{"PROBLEM unpack_config", "no unpack platforms defined"}, 1},
		{"proxy address differs", 3, edit(`address = "/run/rill/rill.sock"`, `address = "/run/other.sock"`),
			[]string{"PROBLEM proxy plugin: proxy_plugins.rill.address = /run/other.sock, but rill-snapshotter listens on /run/rill/rill.sock"}, 1},
		{"no proxy plugin", 3, edit("[proxy_plugins.rill]", "[proxy_plugins.other]"),
			[]string{"PROBLEM proxy plugin: containerd has no [proxy_plugins.rill]"}, 1},
		{"1.7 annotations disabled", 2, edit("disable_snapshot_annotations = false", "disable_snapshot_annotations = true"),
			[]string{"PROBLEM snapshot annotations", "1.7 defaults to true"}, 1},
		{"1.7 CRI snapshotter missing", 2, edit(`snapshotter = "rill"`, `default_runtime_name = "runc"`),
			[]string{"PROBLEM CRI snapshotter", "not set (overlayfs)"}, 1},
		{"2.x annotations off", 3, func(t *testing.T, root string) {
			edit("[plugins.'io.containerd.cri.v1.images']\n", "[plugins.'io.containerd.cri.v1.images']\n  disable_snapshot_annotations = false\n")(t, root)
		}, []string{"WARN    snapshot annotations", "client-side pull", "0 problems, 1 warnings"}, 0},
		{"no containerd config", 3, func(t *testing.T, root string) { os.Remove(filepath.Join(root, "etc/containerd/config.toml")) },
			[]string{"PROBLEM containerd config", "no such file", "fix: run rill install-node"}, 1},
		{"no /dev/fuse", 3, func(t *testing.T, root string) { os.Remove(filepath.Join(root, "dev/fuse")) },
			[]string{"PROBLEM /dev/fuse", "modprobe fuse"}, 1},
		{"/dev/fuse a plain file", 3, func(t *testing.T, root string) {
			os.Remove(filepath.Join(root, "dev/fuse"))
			writeFile(t, filepath.Join(root, "dev/fuse"), "")
		}, []string{"PROBLEM /dev/fuse", "not a character device"}, 1},
		{"rill not running", 3, func(t *testing.T, root string) { os.Remove(filepath.Join(root, "run/rill/rill.sock")) },
			[]string{"PROBLEM rill socket", "rill-snapshotter is not running", "systemctl start rill-snapshotter"}, 1},
		{"socket open to all", 3, func(t *testing.T, root string) { os.Chmod(filepath.Join(root, "run/rill/rill.sock"), 0o666) },
			[]string{"PROBLEM rill socket", "others may call it", "chmod 0600"}, 1},
		{"socket directory open to all", 3, func(t *testing.T, root string) { os.Chmod(filepath.Join(root, "run/rill"), 0o777) },
			[]string{"PROBLEM rill socket", "others may replace the socket", "chmod 0700"}, 1},
		{"state on another filesystem", 3, func(t *testing.T, root string) {
			os.Remove(filepath.Join(root, "var/lib/containerd"))
			if err := os.Symlink("/proc", filepath.Join(root, "var/lib/containerd")); err != nil {
				t.Fatal(err)
			}
		}, []string{"PROBLEM state filesystem", "different filesystems", "kubelet's image garbage collection"}, 1},
		{"streaming off", 3, func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "etc/rill/config.toml"), "[streaming]\nenabled = false\n")
		},
			[]string{"PROBLEM streaming: streaming.enabled = false"}, 1},
		{"bad rill config", 3, func(t *testing.T, root string) {
			writeFile(t, filepath.Join(root, "etc/rill/config.toml"), "rooot = \"/x\"\n")
		},
			[]string{"PROBLEM rill config", "rooot"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := goodNode(t, tc.version)
			tc.breakIt(t, root)
			code, out := doctorOn(t, root)
			if code != tc.exit {
				t.Errorf("exit %d, want %d", code, tc.exit)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestDoctorPassthroughOnOldKernels(t *testing.T) {
	root := goodNode(t, 3)
	code, out, errOut := rill(t, "doctor", "--root-prefix", root, "--no-containerd", "--kernel-release", "5.15.0-91-generic")
	if code != 0 || !strings.Contains(out, "WARN    FUSE passthrough: kernel 5.15.0-91-generic is older than 6.9") {
		t.Errorf("exit %d:\n%s%s", code, out, errOut)
	}
}

// rill doctor IMAGE says whether the image would stream and why not, and what to do.
func TestDoctorImage(t *testing.T) {
	host := startRegistry(t, nil)
	ref := host + "/team/app:v1"
	d := pushRandom(t, ref, "amd64")
	root := goodNode(t, 3)
	dockerConfig := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, dockerConfig, `{"auths":{"`+host+`":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("u:p"))+`"}}}`)

	code, out := doctorOn(t, root, ref, "--plain-http", "--hosts-dir", t.TempDir())
	for _, want := range []string{"ok      registry: " + ref + " resolves to sha256:", "credentials: none for " + host, "PROBLEM would stream: no, linux/amd64: the image has no streaming artifact", "fix: rill create " + ref} {
		if !strings.Contains(out, want) {
			t.Errorf("before rill create: output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("before rill create: exit %d", code)
	}

	if code, _, errOut := rill(t, "create", "--plain-http", ref); code != 0 {
		t.Fatalf("rill create: %s", errOut)
	}
	code, out = doctorOn(t, root, ref, "--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", dockerConfig)
	if code != 0 || !strings.Contains(out, "ok      would stream: yes, linux/amd64: the tag binds streaming artifact") || !strings.Contains(out, "credentials: for "+host+" in docker config "+dockerConfig) {
		t.Errorf("after rill create: exit %d:\n%s", code, out)
	}

	code, out = doctorOn(t, root, host+"/team/app@"+d.String(), "--plain-http", "--hosts-dir", t.TempDir())
	if code != 1 || !strings.Contains(out, "pulled by digest, so only referrers count") {
		t.Errorf("by digest: exit %d:\n%s", code, out)
	}
	writeFile(t, filepath.Join(root, "etc/rill/config.toml"), "[streaming]\ntrust = \"referrers\"\n")
	code, out = doctorOn(t, root, host+"/team/app@"+d.String(), "--plain-http", "--hosts-dir", t.TempDir())
	if code != 0 || !strings.Contains(out, "streaming.trust = referrers (reason referrer)") {
		t.Errorf("by digest, trusting referrers: exit %d:\n%s", code, out)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	code, out = doctorOn(t, root, dead+"/team/app:v1", "--plain-http", "--hosts-dir", t.TempDir())
	if code != 1 || !strings.Contains(out, "PROBLEM registry: cannot resolve "+dead+"/team/app:v1") || !strings.Contains(out, "check that the node reaches "+dead) {
		t.Errorf("unreachable registry: exit %d:\n%s", code, out)
	}
}
