// Package regtest starts the registries tests run against, on loopback: go-containerregistry's
// in-process registry (with or without the referrers API) and the distribution registry binary
// (no referrers API: clients use the tag-schema fallback), which script/setup-test-env.sh
// installs. Every registry stops when its test ends.
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

// InProcess starts go-containerregistry's registry, with the referrers API when referrers is
// set, and returns its host:port.
func InProcess(t testing.TB, referrers bool) string {
	t.Helper()
	opts := []registry.Option{registry.Logger(log.New(io.Discard, "", 0))}
	if referrers {
		opts = append(opts, registry.WithReferrersSupport(true))
	}
	s := httptest.NewServer(registry.New(opts...))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// Kinds are the registries every scenario runs against.
func Kinds() []string { return []string{"referrers-api", "distribution"} }

// Start starts a registry of kind and returns its host:port; the test's cleanup stops it.
// wrap, when set, stands in front of the in-process registry (the distribution registry cannot
// be wrapped).
func Start(t testing.TB, kind string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	switch kind {
	case "referrers-api":
		var h http.Handler = registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
		if wrap != nil {
			h = wrap(h)
		}
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return strings.TrimPrefix(s.URL, "http://")
	case "distribution":
		if wrap != nil {
			t.Fatal("the distribution registry cannot be wrapped")
		}
		return Distribution(t, "")
	}
	t.Fatalf("unknown registry kind %q", kind)
	return ""
}

// Distribution starts the distribution registry binary with deletes enabled and extra
// appended to its configuration; the test's cleanup stops it by PID.
func Distribution(t testing.TB, extra string) string {
	t.Helper()
	bin, err := exec.LookPath("registry")
	if err != nil {
		t.Fatalf("the distribution registry binary is not on PATH (%v): run script/setup-test-env.sh", err)
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s", filepath.Join(dir, "data"), addr, extra)
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
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
			t.Fatalf("registry exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s not ready within 20s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
