// Package regtest starts registries for the tests of remote: go-containerregistry's
// in-process registry (with the referrers API) and the real distribution registry binary
// (without it), each on a free loopback port.
package regtest

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// SetupScript installs the registry binary (and the rest of the test environment).
const SetupScript = "script/setup-test-env.sh"

// InProcess starts go-containerregistry's registry, with the referrers API when referrers is
// set, and returns its host:port.
func InProcess(t testing.TB, referrers bool) string {
	t.Helper()
	var opts []registry.Option
	if referrers {
		opts = append(opts, registry.WithReferrersSupport(true))
	}
	opts = append(opts, registry.Logger(discardLogger()))
	s := httptest.NewServer(registry.New(opts...))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// Distribution starts the distribution registry binary ("registry", v3) on a free loopback
// port with storage in a temporary directory, and stops it by PID when the test ends. It fails
// the test when the binary is missing.
func Distribution(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("registry")
	if err != nil {
		t.Fatalf("the distribution registry binary is not on PATH (%v): run %s", err, SetupScript)
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("registry exited before serving: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("registry on %s not ready within 20s: %v\n%s", addr, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port free at the time of the call.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
