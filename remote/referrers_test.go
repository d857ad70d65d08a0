package remote

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

func TestParseReferrersFilters(t *testing.T) {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.rill.streaming.v1", Digest: digest.FromString("a"), Size: 10},
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.example.sbom", Digest: digest.FromString("b"), Size: 10},
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.rill.streaming.v1", Digest: "sha256:nothex", Size: 10},
	}}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	got, err := ParseReferrers(b, "application/vnd.rill.streaming.v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Digest != digest.FromString("a") {
		t.Fatalf("got %v, want only the valid streaming artifact", got)
	}
	all, err := ParseReferrers(b, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("unfiltered: %v, %v", all, err)
	}
	if _, err := ParseReferrers([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`), ""); err == nil {
		t.Fatal("a manifest accepted as a referrers index")
	}
}

func TestFallbackTag(t *testing.T) {
	d := digest.FromString("x")
	if got, want := FallbackTag(d), "sha256-"+d.Encoded(); got != want {
		t.Fatalf("FallbackTag = %s, want %s", got, want)
	}
}

func FuzzParseReferrers(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"t","digest":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","size":3}]}`), "t")
	f.Add([]byte(`{"schemaVersion":2,"manifests":null}`), "")
	f.Add([]byte(`[]`), "t")
	f.Fuzz(func(t *testing.T, b []byte, artifactType string) {
		descs, err := ParseReferrers(b, artifactType)
		if err != nil {
			return
		}
		for _, d := range descs {
			if d.Digest.Validate() != nil || d.Size <= 0 {
				t.Fatalf("invalid descriptor returned: %+v", d)
			}
			if artifactType != "" && d.ArtifactType != artifactType {
				t.Fatalf("artifactType %q returned for filter %q", d.ArtifactType, artifactType)
			}
		}
	})
}

// TestReferrersPagination follows the Link header of a paginated referrers API.
func TestReferrersPagination(t *testing.T) {
	subject := digest.FromString("subject")
	page := func(d digest.Digest) []byte {
		idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: streamingType, Digest: d, Size: 100},
		}}
		idx.SchemaVersion = 2
		b, _ := json.Marshal(idx)
		return b
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/app/referrers/"+subject.String(), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		if r.URL.Query().Get("last") == "" {
			w.Header().Set("Link", `</v2/app/referrers/`+subject.String()+`?last=1>; rel="next"`)
			w.Write(page(digest.FromString("one")))
			return
		}
		w.Write(page(digest.FromString("two")))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r := testRegistry(t)
	got, err := r.Referrers(testCtx(t), strings.TrimPrefix(srv.URL, "http://")+"/app", subject, streamingType)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Digest != digest.FromString("one") || got[1].Digest != digest.FromString("two") {
		t.Fatalf("referrers = %+v, want both pages in order", got)
	}
}

// TestReferrersThroughMirror: a mirror that lacks the referrers (it copied the image, not
// its artifacts) answers with an empty list, through its referrers API or a 404 on the
// fallback tag; the upstream must still be asked, and its error kept when it fails.
func TestReferrersThroughMirror(t *testing.T) {
	for _, caps := range []string{`"pull", "resolve"`, `"pull", "resolve", "referrers"`} {
		t.Run("mirror capabilities "+caps, func(t *testing.T) {
			upstream := faultproxy.New(t, regtest.InProcess(t, true))
			mirror := faultproxy.New(t, regtest.InProcess(t, true))
			certs := t.TempDir()
			writeFile(t, filepath.Join(certs, upstream.Host, "hosts.toml"), fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = [%s]
`, upstream.Host, mirror.Host, caps), 0o644)

			direct := testRegistry(t)
			platform := ocispec.Platform{OS: "linux", Architecture: "amd64"}
			img := pushImage(t, direct, upstream.Host+"/app/img:v1", 21, platform)
			pushImage(t, direct, mirror.Host+"/app/img:v1", 21, platform)
			stream := pushArtifact(t, direct, upstream.Host+"/app/img", img.manifest, streamingType)
			other := pushImage(t, direct, upstream.Host+"/app/img:v2", 22, platform)
			mirror.Reset()

			r := testRegistry(t, WithHostsDir(certs), WithRetry(2, time.Millisecond, 10*time.Millisecond))
			ctx := testCtx(t)
			got, err := r.Referrers(ctx, upstream.Host+"/app/img", img.manifest.Digest, streamingType)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Digest != stream.Digest {
				t.Fatalf("referrers through a mirror without them = %+v, want the upstream's %s", got, stream.Digest)
			}
			if mirror.Count("GET", "") == 0 {
				t.Fatal("the mirror was not asked first")
			}

			// None anywhere: an empty list, not an error.
			none, err := r.Referrers(ctx, upstream.Host+"/app/img", other.manifest.Digest, streamingType)
			if err != nil || len(none) != 0 {
				t.Fatalf("referrers of an image without any: %+v, %v; want none", none, err)
			}

			// The upstream failing after the mirror's empty answer is an error, not "none".
			upstream.Add(faultproxy.Fault{Kind: faultproxy.Status, Code: 503, Times: -1, Match: func(r *http.Request) bool {
				return strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "/manifests/sha256-")
			}})
			_, err = r.Referrers(ctx, upstream.Host+"/app/img", img.manifest.Digest, streamingType)
			if err == nil || !strings.Contains(err.Error(), "503") {
				t.Fatalf("upstream failing after an empty mirror: %v, want its 503", err)
			}
		})
	}
}
