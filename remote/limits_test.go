package remote

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

// A manifest or referrers index over the size limit is refused at once: a size limit is not
// a transient fault, so it is not fetched again.
func TestOversizedManifestIsNotRetried(t *testing.T) {
	big := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"pad":"` + strings.Repeat("x", 4096) + `"}`
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case req.Method == http.MethodHead:
			w.WriteHeader(http.StatusMethodNotAllowed) // the digest comes only with a GET
		default:
			gets.Add(1)
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			w.Write([]byte(big))
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	r := testRegistry(t, WithMaxManifestSize(1024))
	ctx := testCtx(t)
	for name, call := range map[string]func() error{
		"resolve": func() error { _, err := r.Resolve(ctx, host+"/app:v1"); return err },
		"referrers": func() error {
			_, err := r.Referrers(ctx, host+"/app", digest.FromString("subject"), "")
			return err
		},
	} {
		gets.Store(0)
		err := call()
		if !errdefs.IsResourceExhausted(err) {
			t.Errorf("%s of a manifest over the size limit: %v, want ResourceExhausted", name, err)
		}
		if n := gets.Load(); n != 1 {
			t.Errorf("%s: the manifest over the size limit was fetched %d times, want once", name, n)
		}
	}
}

// A blob read that fails for good (connections reset, bodies cut short) says which host
// failed and how many attempts were made, whatever the last error was.
func TestFailedBlobReadNamesHostAndAttempts(t *testing.T) {
	for name, kind := range map[string]faultproxy.Kind{"reset": faultproxy.Drop, "truncated": faultproxy.Truncate} {
		t.Run(name, func(t *testing.T) {
			f := newBlobFixture(t, regtest.InProcess(t, false))
			f.proxy.Add(faultproxy.Fault{Kind: kind, Times: -1})
			br := f.reader(t)
			_, err := br.ReadAt(make([]byte, 64<<10), 4096)
			if err == nil {
				t.Fatal("read through a proxy that fails every request succeeded")
			}
			for _, want := range []string{f.proxy.Host, "5 attempts"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// A read whose time runs out while its requests are being reset says so, with the host and
// the attempts made.
func TestTimedOutBlobReadNamesHostAndAttempts(t *testing.T) {
	f := newBlobFixture(t, regtest.InProcess(t, false), WithRetry(1000, 10*time.Millisecond, 20*time.Millisecond))
	f.proxy.Add(faultproxy.Fault{Kind: faultproxy.Drop, Times: -1})
	br := f.reader(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := br.ReadAtContext(ctx, make([]byte, 64<<10), 4096)
	if err == nil {
		t.Fatal("read through a proxy that resets every request succeeded")
	}
	if !strings.Contains(err.Error(), f.proxy.Host) || !regexp.MustCompile(`\d+ attempts`).MatchString(err.Error()) {
		t.Errorf("error %q does not name the host and the attempts", err)
	}
}
