package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

const streamingType = "application/vnd.rill.streaming.v1"

// registries are the two the package must work with: go-containerregistry's, which serves
// the referrers API, and the real distribution registry, which does not.
var registries = []struct {
	name         string
	start        func(testing.TB) string
	referrersAPI bool
	mountsAcross bool
}{
	{"ggcr", func(t testing.TB) string { return regtest.InProcess(t, true) }, true, false},
	{"distribution", func(t testing.TB) string { return regtest.Distribution(t, "") }, false, true},
}

func TestManifests(t *testing.T) {
	for _, rg := range registries {
		t.Run(rg.name, func(t *testing.T) {
			host := rg.start(t)
			r := testRegistry(t)
			ctx := testCtx(t)
			amd := pushImage(t, r, host+"/app/img:amd64", 1, ocispec.Platform{OS: "linux", Architecture: "amd64"})
			arm := pushImage(t, r, host+"/app/img:arm64", 2, ocispec.Platform{OS: "linux", Architecture: "arm64"})

			d, err := r.Resolve(ctx, host+"/app/img:amd64")
			if err != nil {
				t.Fatal(err)
			}
			if d.Digest != amd.manifest.Digest || d.Size != amd.manifest.Size || d.MediaType != ocispec.MediaTypeImageManifest {
				t.Fatalf("Resolve = %+v, want %+v", d, amd.manifest)
			}
			if d, err := r.Resolve(ctx, host+"/app/img@"+arm.manifest.Digest.String()); err != nil || d.Digest != arm.manifest.Digest {
				t.Fatalf("Resolve by digest = %+v, %v", d, err)
			}
			if _, err := r.Resolve(ctx, host+"/app/img:missing"); !errdefs.IsNotFound(err) {
				t.Fatalf("Resolve of a missing tag: %v, want NotFound", err)
			}

			b, err := r.FetchManifest(ctx, host+"/app/img", amd.manifest)
			if err != nil || !bytes.Equal(b, amd.manifestData) {
				t.Fatalf("FetchManifest: %v", err)
			}
			cfg, err := r.FetchBlob(ctx, host+"/app/img", amd.config)
			if err != nil || digest.FromBytes(cfg) != amd.config.Digest {
				t.Fatalf("FetchBlob config: %v", err)
			}
			// A descriptor that does not match what the registry holds is refused.
			lying := amd.manifest
			lying.Size--
			if _, err := r.FetchManifest(ctx, host+"/app/img", lying); err == nil {
				t.Fatal("manifest of the wrong size accepted")
			}
			if _, err := r.FetchManifest(ctx, host+"/app/img", descOf(ocispec.MediaTypeImageManifest, []byte("{}"))); !errdefs.IsNotFound(err) {
				t.Fatalf("missing manifest: %v, want NotFound", err)
			}
			small := testRegistry(t, WithMaxManifestSize(16))
			if _, err := small.FetchManifest(ctx, host+"/app/img", amd.manifest); !errdefs.IsResourceExhausted(err) {
				t.Fatalf("manifest over the size limit: %v, want ResourceExhausted", err)
			}

			// An index over both, resolved and narrowed to a platform.
			idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
				withPlatform(amd.manifest, "amd64"), withPlatform(arm.manifest, "arm64"),
			}}
			idx.SchemaVersion = 2
			ib, _ := json.Marshal(idx)
			if _, err := r.PushManifest(ctx, host+"/app/img:multi", ocispec.MediaTypeImageIndex, ib); err != nil {
				t.Fatal(err)
			}
			id, err := r.Resolve(ctx, host+"/app/img:multi")
			if err != nil || id.MediaType != ocispec.MediaTypeImageIndex {
				t.Fatalf("Resolve index = %+v, %v", id, err)
			}
			ib2, err := r.FetchManifest(ctx, host+"/app/img", id)
			if err != nil {
				t.Fatal(err)
			}
			sel, err := SelectPlatform(ib2, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm64"}))
			if err != nil || sel.Digest != arm.manifest.Digest {
				t.Fatalf("SelectPlatform arm64 = %v, %v", sel.Digest, err)
			}
			if _, err := SelectPlatform(ib2, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "s390x"})); !errdefs.IsNotFound(err) {
				t.Fatalf("SelectPlatform s390x: %v, want NotFound", err)
			}
		})
	}
}

func withPlatform(d ocispec.Descriptor, arch string) ocispec.Descriptor {
	d.Platform = &ocispec.Platform{OS: "linux", Architecture: arch}
	return d
}

func TestReferrers(t *testing.T) {
	for _, rg := range registries {
		t.Run(rg.name, func(t *testing.T) {
			host := rg.start(t)
			r := testRegistry(t)
			ctx := testCtx(t)
			img := pushImage(t, r, host+"/app/img:v1", 3, ocispec.Platform{OS: "linux", Architecture: "amd64"})
			none, err := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, streamingType)
			if err != nil || len(none) != 0 {
				t.Fatalf("referrers before any: %v, %v", none, err)
			}
			stream := pushArtifact(t, r, host+"/app/img", img.manifest, streamingType)
			sbom := pushArtifact(t, r, host+"/app/img", img.manifest, "application/vnd.example.sbom")

			got, err := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, streamingType)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Digest != stream.Digest || got[0].ArtifactType != streamingType {
				t.Fatalf("streaming referrers = %+v, want only %s", got, stream.Digest)
			}
			all, err := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, "")
			if err != nil || len(all) != 2 {
				t.Fatalf("all referrers = %+v, %v; want 2", all, err)
			}
			// A second push of the same artifact does not list it twice.
			pushArtifact(t, r, host+"/app/img", img.manifest, streamingType)
			if again, _ := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, streamingType); len(again) != 1 {
				t.Fatalf("after pushing again: %d streaming referrers, want 1", len(again))
			}

			_, err = r.Resolve(ctx, host+"/app/img:"+FallbackTag(img.manifest.Digest))
			if rg.referrersAPI {
				if !errdefs.IsNotFound(err) {
					t.Fatalf("fallback tag written although the registry has the referrers API: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("fallback tag missing on a registry without the referrers API: %v", err)
			}
			if err := r.RemoveReferrer(ctx, host+"/app/img", img.manifest.Digest, sbom.Digest); err != nil {
				t.Fatal(err)
			}
			left, err := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, "")
			if err != nil || len(left) != 1 || left[0].Digest != stream.Digest {
				t.Fatalf("after RemoveReferrer: %+v, %v", left, err)
			}
		})
	}
}

// pushArtifact pushes an artifact manifest with subject and returns its descriptor.
func pushArtifact(t testing.TB, r *Registry, repo string, subject ocispec.Descriptor, artifactType string) ocispec.Descriptor {
	t.Helper()
	layer := pushBlob(t, r, repo, []byte("artifact of type "+artifactType))
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.DescriptorEmptyJSON,
		Layers:       []ocispec.Descriptor{layer},
		Subject:      &subject,
		Annotations:  map[string]string{"dev.rill.test": artifactType},
	}
	m.SchemaVersion = 2
	pushBlob(t, r, repo, ocispec.DescriptorEmptyJSON.Data)
	b, _ := json.Marshal(m)
	d, err := r.PushManifest(testCtx(t), repo+"@"+digest.FromBytes(b).String(), ocispec.MediaTypeImageManifest, b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPushBlob(t *testing.T) {
	for _, rg := range registries {
		t.Run(rg.name, func(t *testing.T) {
			backend := rg.start(t)
			p := faultproxy.New(t, backend)
			r := testRegistry(t)
			ctx := testCtx(t)
			data := randomBytes(100<<10, 7)
			d := descOf("application/octet-stream", data)
			if err := r.PushBlob(ctx, p.Host+"/a/src", d, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			if n := p.Count("PUT", "/blobs/uploads/"); n != 1 {
				t.Fatalf("%d uploads, want 1", n)
			}

			p.Reset()
			if err := r.PushBlob(ctx, p.Host+"/a/src", d, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			if n := p.Count("POST", "") + p.Count("PUT", ""); n != 0 {
				t.Fatalf("existing blob uploaded again (%d requests)", n)
			}

			p.Reset()
			if err := r.PushBlob(ctx, p.Host+"/b/dst", d, bytes.NewReader(data), p.Host+"/a/src:latest"); err != nil {
				t.Fatal(err)
			}
			// go-containerregistry's registry keeps blobs across repositories, so the blob
			// is there already; distribution mounts it. Either way nothing is uploaded.
			if n := p.Count("PUT", ""); n != 0 {
				t.Fatalf("blob uploaded (%d PUTs) although it could be mounted", n)
			}
			var mountAsked bool
			for _, rec := range p.Records() {
				if rec.Method == "POST" && rec.Query.Get("mount") == d.Digest.String() && rec.Query.Get("from") == "a/src" {
					mountAsked = true
				}
			}
			if rg.mountsAcross && !mountAsked {
				t.Fatal("no cross-repository mount asked for")
			}
			got, err := r.FetchBlob(ctx, p.Host+"/b/dst", d)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("blob in the destination repository: %v", err)
			}

			// Retried after a dropped connection: the upload still completes.
			p.Add(faultproxy.Fault{Kind: faultproxy.Drop, Times: 1, Match: func(r *http.Request) bool { return r.Method == "PUT" }})
			other := randomBytes(10<<10, 8)
			od := descOf("application/octet-stream", other)
			if err := r.PushBlob(ctx, p.Host+"/a/src", od, bytes.NewReader(other)); err != nil {
				t.Fatalf("push after a dropped connection: %v", err)
			}
			if got, err := r.FetchBlob(ctx, p.Host+"/a/src", od); err != nil || !bytes.Equal(got, other) {
				t.Fatalf("blob after a retried push: %v", err)
			}
		})
	}
}

func TestErrorsNameTheReference(t *testing.T) {
	host := regtest.InProcess(t, true)
	r := testRegistry(t)
	_, err := r.Resolve(testCtx(t), host+"/nope/img:v9")
	if err == nil || !strings.Contains(err.Error(), "nope/img:v9") {
		t.Fatalf("error %v does not name the reference", err)
	}
}

// TestPushBlobMountsFromEachRepository: the repositories to mount from are asked in order
// until one has the blob; when none has it, the blob is uploaded.
func TestPushBlobMountsFromEachRepository(t *testing.T) {
	p := faultproxy.New(t, regtest.Distribution(t, ""))
	r := testRegistry(t)
	ctx := testCtx(t)
	data := randomBytes(50<<10, 31)
	d := descOf("application/octet-stream", data)
	if err := r.PushBlob(ctx, p.Host+"/a/src", d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	pushBlob(t, r, p.Host+"/c/other", []byte("another blob, so that c/other exists"))

	p.Reset()
	if err := r.PushBlob(ctx, p.Host+"/b/dst", d, bytes.NewReader(data), p.Host+"/c/other", "d/missing", p.Host+"/a/src:v1"); err != nil {
		t.Fatal(err)
	}
	if n := p.Count("PUT", ""); n != 0 {
		t.Fatalf("blob uploaded (%d PUTs) although a/src, third in the list, has it", n)
	}
	var asked []string
	for _, rec := range p.Records() {
		if rec.Method == "POST" && rec.Query.Get("mount") == d.Digest.String() {
			asked = append(asked, rec.Query.Get("from"))
		}
	}
	if want := []string{"c/other", "d/missing", "a/src"}; !slices.Equal(asked, want) {
		t.Fatalf("mounts asked from %v, want %v in order", asked, want)
	}
	if n := p.Count("DELETE", "/blobs/uploads/"); n != 2 {
		t.Fatalf("%d upload sessions cancelled, want the 2 opened by the mounts that missed", n)
	}
	if got, err := r.FetchBlob(ctx, p.Host+"/b/dst", d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("mounted blob in b/dst: %v", err)
	}

	// No repository has it: uploaded, once.
	p.Reset()
	other := randomBytes(20<<10, 32)
	od := descOf("application/octet-stream", other)
	if err := r.PushBlob(ctx, p.Host+"/b/dst", od, bytes.NewReader(other), p.Host+"/c/other", p.Host+"/a/src"); err != nil {
		t.Fatal(err)
	}
	if n := p.Count("PUT", "/blobs/uploads/"); n != 1 {
		t.Fatalf("%d uploads of a blob no repository has, want 1", n)
	}
	if got, err := r.FetchBlob(ctx, p.Host+"/b/dst", od); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("uploaded blob in b/dst: %v", err)
	}
}

// TestFetchVerifiesDigest: a manifest or blob fetched by digest whose bytes do not match
// the digest is never returned; a corruption that does not last is retried.
func TestFetchVerifiesDigest(t *testing.T) {
	p := faultproxy.New(t, regtest.InProcess(t, true))
	r := testRegistry(t)
	ctx := testCtx(t)
	img := pushImage(t, r, p.Host+"/app/img:v1", 41, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	fetches := func(req *http.Request) bool {
		return req.Method == http.MethodGet && (strings.Contains(req.URL.Path, "/manifests/sha256:") || strings.Contains(req.URL.Path, "/blobs/sha256:"))
	}
	for _, tc := range []struct {
		name  string
		desc  ocispec.Descriptor
		want  []byte
		fetch func(context.Context, string, ocispec.Descriptor) ([]byte, error)
	}{
		{"manifest", img.manifest, img.manifestData, r.FetchManifest},
		{"blob", img.config, nil, r.FetchBlob},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.Clear()
			p.Add(faultproxy.Fault{Kind: faultproxy.Corrupt, Times: -1, Match: fetches})
			var b []byte
			var err error
			timed(t, 5*time.Second, func() { b, err = tc.fetch(ctx, p.Host+"/app/img", tc.desc) })
			if err == nil || b != nil {
				t.Fatalf("corrupted %s returned: %d bytes, error %v", tc.name, len(b), err)
			}
			if !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), "content has digest") || !strings.Contains(err.Error(), tc.desc.Digest.String()) {
				t.Fatalf("corrupted %s: error %v, want a DataLoss error naming the digests", tc.name, err)
			}

			p.Clear()
			p.Add(faultproxy.Fault{Kind: faultproxy.Corrupt, Times: 1, Match: fetches})
			timed(t, 5*time.Second, func() { b, err = tc.fetch(ctx, p.Host+"/app/img", tc.desc) })
			if err != nil || digest.FromBytes(b) != tc.desc.Digest || (tc.want != nil && !bytes.Equal(b, tc.want)) {
				t.Fatalf("%s corrupted once: %v, want the right bytes after a retry", tc.name, err)
			}
		})
	}
}
