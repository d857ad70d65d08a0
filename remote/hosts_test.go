package remote

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

func faultproxy503Storage() faultproxy.Fault {
	return faultproxy.Fault{Kind: faultproxy.Status, Code: 503, Times: -1, Match: func(*http.Request) bool { return true }}
}

// TestMirrors: hosts.toml lists a mirror before the upstream; the mirror is asked first with
// ?ns=<upstream>, and the upstream when the mirror lacks the content.
func TestMirrors(t *testing.T) {
	upstream := faultproxy.New(t, regtest.InProcess(t, true))
	mirror := faultproxy.New(t, regtest.InProcess(t, true))
	certs := t.TempDir()
	writeFile(t, filepath.Join(certs, upstream.Host, "hosts.toml"), fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, upstream.Host, mirror.Host), 0o644)

	direct := testRegistry(t)
	img := pushImage(t, direct, upstream.Host+"/app/img:v1", 5, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	onMirror := randomBytes(10<<10, 6)
	mirrorDesc := pushBlob(t, direct, mirror.Host+"/app/img", onMirror)
	upstream.Reset()
	mirror.Reset()

	r := testRegistry(t, WithHostsDir(certs))
	ctx := testCtx(t)
	d, err := r.Resolve(ctx, upstream.Host+"/app/img:v1")
	if err != nil || d.Digest != img.manifest.Digest {
		t.Fatalf("Resolve through the mirror configuration: %v, %v", d, err)
	}
	if mirror.Count("", "/v2/app/img/manifests/v1") == 0 || upstream.Count("", "/v2/app/img/manifests/v1") == 0 {
		t.Fatal("the mirror was not asked first, or the upstream not after it")
	}
	for _, rec := range mirror.Records() {
		if rec.Query.Get("ns") != upstream.Host {
			t.Fatalf("request to the mirror without ns=%s: %+v", upstream.Host, rec)
		}
	}
	for _, rec := range upstream.Records() {
		if rec.Query.Has("ns") {
			t.Fatalf("request to the upstream with ns: %+v", rec)
		}
	}

	upstream.Reset()
	br, err := r.BlobReader(ctx, upstream.Host+"/app/img", mirrorDesc)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	got := make([]byte, 100)
	if _, err := br.ReadAt(got, 50); err != nil || !bytes.Equal(got, onMirror[50:150]) {
		t.Fatalf("blob from the mirror: %v", err)
	}
	if n := upstream.Count("GET", "/blobs/"); n != 0 {
		t.Fatalf("upstream asked %d times for a blob the mirror has", n)
	}

	// A blob only upstream is found there after the mirror's 404.
	br2, err := r.BlobReader(ctx, upstream.Host+"/app/img", img.layer)
	if err != nil {
		t.Fatal(err)
	}
	defer br2.Close()
	if _, err := br2.ReadAt(got, 0); err != nil || !bytes.Equal(got, img.layerData[:100]) {
		t.Fatalf("blob from the upstream: %v", err)
	}
	if !strings.Contains(fmt.Sprint(upstream.Records()), img.layer.Digest.String()) {
		t.Fatal("upstream not asked after the mirror missed")
	}
}

// TestHostsTLS: a registry with a private CA works once hosts.toml names the CA, and fails
// clearly without it.
func TestHostsTLS(t *testing.T) {
	srv := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	// 127.0.0.1 with a port would default to plain HTTP: name the registry by its
	// certificate's other name, resolved through hosts.toml's server.
	certs := t.TempDir()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	writeFile(t, filepath.Join(certs, "registry.test", "ca.crt"), string(caPEM), 0o644)
	writeFile(t, filepath.Join(certs, "registry.test", "hosts.toml"), fmt.Sprintf(`server = "https://%s"
ca = "ca.crt"
`, host), 0o644)

	r := testRegistry(t, WithHostsDir(certs))
	data := []byte("over TLS")
	d := descOf("application/octet-stream", data)
	if err := r.PushBlob(testCtx(t), "registry.test/tls/blob", d, bytes.NewReader(data)); err != nil {
		t.Fatalf("push over TLS with the CA from hosts.toml: %v", err)
	}
	if got, err := r.FetchBlob(testCtx(t), "registry.test/tls/blob", d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fetch over TLS: %v", err)
	}

	noCA := t.TempDir()
	writeFile(t, filepath.Join(noCA, "registry.test", "hosts.toml"), fmt.Sprintf("server = \"https://%s\"\n", host), 0o644)
	r2 := testRegistry(t, WithHostsDir(noCA), WithRetry(1, time.Millisecond, time.Millisecond))
	_, err := r2.FetchBlob(testCtx(t), "registry.test/tls/blob", d)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: %v, want a certificate error", err)
	}
}

func TestResolveRetries(t *testing.T) {
	p := faultproxy.New(t, regtest.InProcess(t, true))
	r := testRegistry(t)
	img := pushImage(t, r, p.Host+"/app/img:v1", 9, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	p.Add(
		faultproxy.Fault{Kind: faultproxy.Status, Code: 503, Times: 2, Match: isManifestRequest},
		faultproxy.Fault{Kind: faultproxy.Drop, Times: 1, Match: isManifestRequest},
	)
	timed(t, 3*time.Second, func() {
		d, err := r.Resolve(testCtx(t), p.Host+"/app/img:v1")
		if err != nil || d.Digest != img.manifest.Digest {
			t.Fatalf("Resolve through 503s and a dropped connection: %v, %v", d, err)
		}
	})
}

func isManifestRequest(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }

// TestHostsReload: an edit of hosts.toml is picked up without a new Registry; unchanged, the
// endpoints and their tokens are kept.
func TestHostsReload(t *testing.T) {
	upstream := faultproxy.New(t, regtest.InProcess(t, true))
	mirror := faultproxy.New(t, regtest.InProcess(t, true))
	certs := t.TempDir()
	r := testRegistry(t, WithHostsDir(certs))
	r.opts.hostsRecheck = 0
	ref := upstream.Host + "/app/img:v1"
	pushImage(t, r, ref, 12, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	upstream.Reset()

	first, err := r.endpoints(testCtx(t), upstream.Host, 0)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := r.endpoints(testCtx(t), upstream.Host, 0); again[0] != first[0] {
		t.Fatal("endpoints loaded again although hosts.toml did not change")
	}
	writeFile(t, filepath.Join(certs, upstream.Host, "hosts.toml"), fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, upstream.Host, mirror.Host), 0o644)
	if _, err := r.Resolve(testCtx(t), ref); err != nil {
		t.Fatal(err)
	}
	if mirror.Count("", "/manifests/v1") == 0 {
		t.Fatal("mirror added to hosts.toml not used")
	}
}
