package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Run as a Type=notify service, the daemon tells systemd READY=1 once it serves, and
// STOPPING=1 when it shuts down.
func TestNotifiesSystemd(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	notify := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", notify)
	sock := filepath.Join(dir, "rill.sock")
	d := startDaemon(t, sock, "--root", t.TempDir())

	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("want READY=1 from the daemon, got %q, %v\n%s", buf[:n], err, d.logs)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("READY=1 sent before the socket accepts: %v", err)
	} else {
		c.Close()
	}
	d.stop(t)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err = conn.Read(buf)
	if err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Fatalf("want STOPPING=1 at shutdown, got %q, %v", buf[:n], err)
	}
}

// make install lays out both binaries (the daemon and the rill CLI), the unit and the default
// config, and keeps an existing config on reinstall.
func TestInstallScript(t *testing.T) {
	dest, bins := t.TempDir(), t.TempDir()
	cli := filepath.Join(bins, "rill")
	if out, err := exec.Command("go", "build", "-o", cli, "../rill").CombinedOutput(); err != nil {
		t.Fatalf("building rill: %v\n%s", err, out)
	}
	install := func() string {
		cmd := exec.Command("bash", "../../script/install.sh", daemonBinary, cli)
		cmd.Env = append(os.Environ(), "DESTDIR="+dest, "PREFIX=/opt/rill/bin")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	install()
	for path, mode := range map[string]os.FileMode{
		"opt/rill/bin/rill-snapshotter":               0o755,
		"opt/rill/bin/rill":                           0o755,
		"etc/systemd/system/rill-snapshotter.service": 0o644,
		"etc/rill/config.toml":                        0o644,
		"var/lib/rill":                                0o700 | os.ModeDir,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Fatalf("install did not create %s: %v", path, err)
		}
		if fi.Mode()&(os.ModePerm|os.ModeDir) != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), mode)
		}
	}
	// The installed binaries are the ones given, and run.
	if out, err := exec.Command(filepath.Join(dest, "opt/rill/bin/rill-snapshotter"), "--version").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "rill-snapshotter test" {
		t.Errorf("installed rill-snapshotter --version: %v %q", err, out)
	}
	if out, err := exec.Command(filepath.Join(dest, "opt/rill/bin/rill"), "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "Usage: rill COMMAND") {
		t.Errorf("installed rill --help: %v %q", err, out)
	}
	unitText, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/rill-snapshotter.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := parseUnit(string(unitText))
	for _, c := range []struct{ section, key, want string }{
		{"Service", "Type", "notify"},
		{"Service", "ExecStart", "/opt/rill/bin/rill-snapshotter --config /etc/rill/config.toml"},
		// Started before containerd, so containerd finds the socket...
		{"Unit", "Before", "containerd.service"},
		// ...and enabled on its own, not as a requirement of containerd.
		{"Install", "WantedBy", "multi-user.target"},
		// systemd keeps the FUSE descriptors across restarts (fdstore), and a restart kills
		// the daemon only, not what it started.
		{"Service", "FileDescriptorStoreMax", "4096"},
		{"Service", "FileDescriptorStorePreserve", "yes"},
		{"Service", "KillMode", "process"},
	} {
		if !slices.Contains(unit[c.section][c.key], c.want) {
			t.Errorf("unit: [%s] %s lacks %q (has %q)", c.section, c.key, c.want, unit[c.section][c.key])
		}
	}
	// Start order only: a dependency on containerd (RequiredBy, Requires, BindsTo, PartOf...)
	// would make `systemctl restart/stop rill-snapshotter` restart or stop containerd.
	for section, keys := range unit {
		for key, values := range keys {
			if section == "Unit" && key == "Before" {
				continue
			}
			for _, v := range values {
				if strings.Contains(v, "containerd.service") {
					t.Errorf("unit: [%s] %s=%s ties rill-snapshotter to containerd beyond start order", section, key, v)
				}
			}
		}
	}
	// The installed default config starts the daemon as it is (paths moved into the test's dirs).
	if os.Getuid() == 0 {
		// Its fd-holder goes to the test's dir, not the node's /run/rill, and is stopped after.
		installed, err := os.ReadFile(filepath.Join(dest, "etc/rill/config.toml"))
		if err != nil {
			t.Fatal(err)
		}
		holder := filepath.Join(t.TempDir(), "fdstore.sock")
		const line = `holder_socket = "/run/rill/fdstore.sock"`
		if !strings.Contains(string(installed), line) {
			t.Fatalf("the installed config does not set %s", line)
		}
		moved := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(moved, []byte(strings.Replace(string(installed), line, fmt.Sprintf("holder_socket = %q", holder), 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		d := startDaemon(t, filepath.Join(t.TempDir(), "rill.sock"), "--config", moved, "--root", t.TempDir())
		d.stop(t)
		stopHolder(t, holder)
	}
	cfg := filepath.Join(dest, "etc/rill/config.toml")
	if err := os.WriteFile(cfg, []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := install(); !strings.Contains(out, "kept existing") {
		t.Errorf("reinstall did not say it kept the config: %s", out)
	}
	if got, _ := os.ReadFile(cfg); string(got) != "# mine\n" {
		t.Fatalf("reinstall overwrote the operator's config: %q", got)
	}
}

// parseUnit reads a systemd unit: section -> key -> values (keys may repeat, values are
// space-separated lists).
func parseUnit(text string) map[string]map[string][]string {
	unit := map[string]map[string][]string{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if unit[section] == nil {
				unit[section] = map[string][]string{}
			}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				continue
			}
			key = strings.TrimSpace(key)
			if key == "ExecStart" {
				unit[section][key] = append(unit[section][key], strings.TrimSpace(value))
				continue
			}
			unit[section][key] = append(unit[section][key], strings.Fields(value)...)
		}
	}
	return unit
}

// stopHolder stops the fd-holder serving socket, if one runs (by the pid in socket+".pid").
func stopHolder(t *testing.T, socket string) {
	t.Helper()
	data, err := os.ReadFile(socket + ".pid")
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("holder pid file: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return // gone already
	}
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("fd-holder %d did not stop on SIGTERM", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running reports whether pid runs (a zombie does not: nobody may reap it here).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, after, ok := strings.Cut(string(stat), ") ")
	return ok && !strings.HasPrefix(after, "Z")
}
