package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `rill-snapshotter fd-holder --socket PATH` serves the holder's socket until SIGTERM, then
// removes it; a second one on the same socket refuses with status 3.
func TestFDHolderSubcommand(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "fd.sock")
	holder := exec.Command(daemonBinary, "fd-holder", "--socket", socket)
	logs := &syncBuffer{}
	holder.Stderr = logs
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Process.Kill()
	until := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unixpacket", socket)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(until) {
			t.Fatalf("the holder does not accept on %s: %v\n%s", socket, err, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}

	out, err := exec.Command(daemonBinary, "fd-holder", "--socket", socket).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "another fd-holder serves this socket") {
		t.Fatalf("second holder: %v, want exit status 3\n%s", err, out)
	}

	holder.Process.Signal(syscall.SIGTERM)
	if err := holder.Wait(); err != nil {
		t.Fatalf("holder after SIGTERM: %v\n%s", err, logs)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
}
