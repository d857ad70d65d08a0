package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// make install lays out the binary, the unit and the default config, and keeps an existing
// config on reinstall.
func TestInstallScript(t *testing.T) {
	dest := t.TempDir()
	install := func() string {
		cmd := exec.Command("bash", "../../script/install.sh", daemonBinary)
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
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/rill-snapshotter.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/opt/rill/bin/rill-snapshotter --config /etc/rill/config.toml"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	// The installed default config starts the daemon as it is (paths moved into the test's dirs).
	if os.Getuid() == 0 {
		d := startDaemon(t, filepath.Join(t.TempDir(), "rill.sock"), "--config", filepath.Join(dest, "etc/rill/config.toml"), "--root", t.TempDir())
		d.stop(t)
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
