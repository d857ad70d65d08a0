// Package regtest starts the registries the tests of convert's subpackages run against —
// go-containerregistry's in-process one (with the referrers API) and the distribution binary
// (without it) — and pushes small images to them.
package regtest

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
)

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

// Ctx is bounded: every wait in these tests ends.
func Ctx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Registry is an anonymous remote.Registry with fast retries and no host configuration
// (plain HTTP to loopback, as containerd does for localhost).
func Registry(t testing.TB) *remote.Registry {
	t.Helper()
	r, err := remote.New(remote.WithHostsDir(t.TempDir()), remote.WithCredentials(remote.Anonymous()),
		remote.WithRetry(2, 10*time.Millisecond, 50*time.Millisecond), remote.WithRequestTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// PushImage pushes a linux/amd64 image whose one layer holds a file with content at ref
// (host/repo:tag) and returns its manifest's descriptor.
func PushImage(t testing.TB, reg *remote.Registry, ref, content string) ocispec.Descriptor {
	t.Helper()
	ctx := Ctx(t)
	i := strings.LastIndex(ref, ":")
	repo := ref[:i]
	tb, err := testlayer.Tar([]testlayer.Entry{testlayer.Dir("etc/", 0o755), testlayer.Reg("etc/content", []byte(content), 0o644)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	gz := testlayer.Gzip(tb)
	ld := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz), Size: int64(len(gz))}
	if err := reg.PushBlob(ctx, repo, ld, bytes.NewReader(gz)); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tb)}},
	})
	cd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	if err := reg.PushBlob(ctx, repo, cd, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{ld}}
	m.SchemaVersion = 2
	raw, _ := json.Marshal(m)
	desc, err := reg.PushManifest(ctx, ref, ocispec.MediaTypeImageManifest, raw)
	if err != nil {
		t.Fatal(err)
	}
	return desc
}
