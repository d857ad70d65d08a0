package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter/status"
)

// testRegistry is go-containerregistry's in-process registry (with the referrers API) and a
// client to push test images with.
type testRegistry struct {
	host string
	reg  *remote.Registry

	mu       sync.Mutex
	requests []string // "METHOD path" of every request the registry answered

	// hangRanges makes range requests hang until the client gives up (a registry that
	// accepts them and never answers); hung counts them.
	hangRanges atomic.Bool
	hung       atomic.Int64
}

// count returns how many requests the registry answered whose "METHOD path" contains what.
func (r *testRegistry) count(what string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, req := range r.requests {
		if strings.Contains(req, what) {
			n++
		}
	}
	return n
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	handler := registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		if r.hangRanges.Load() && req.Header.Get("Range") != "" {
			r.hung.Add(1)
			<-req.Context().Done()
			return
		}
		handler.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, host), 0o755); err != nil {
		t.Fatal(err)
	}
	hostsTOML := fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", srv.URL, srv.URL)
	if err := os.WriteFile(filepath.Join(hosts, host, "hosts.toml"), []byte(hostsTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := remote.New(remote.WithHostsDir(hosts))
	if err != nil {
		t.Fatal(err)
	}
	r.host, r.reg = host, reg
	return r
}

func (r *testRegistry) pushBlob(t *testing.T, repo string, mediaType string, data []byte, annotations map[string]string) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data)), Annotations: annotations}
	if err := r.reg.PushBlob(context.Background(), r.host+"/"+repo, desc, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return desc
}

func (r *testRegistry) pushJSON(t *testing.T, ref, mediaType string, v any) ocispec.Descriptor {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := r.reg.PushManifest(context.Background(), r.host+"/"+ref, mediaType, b)
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	desc.MediaType = mediaType
	return desc
}

// testImage is an image manifest M in the registry and, where made, its streaming artifact S.
type testImage struct {
	manifest     ocispec.Manifest
	manifestDesc ocispec.Descriptor
	artifactDesc ocispec.Descriptor
	artifact     ocispec.Manifest
}

// pushImage pushes a two-layer image of the platform to repo; estargz makes its own layers
// eStargz (a third-party eStargz image).
func (r *testRegistry) pushImage(t *testing.T, repo string, platform ocispec.Platform, estargz bool) *testImage {
	t.Helper()
	img := &testImage{}
	cfg := ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers"}}
	for _, entries := range [][]testlayer.Entry{testlayer.EveryKind()[:5], {testlayer.Reg("app/"+platform.Architecture, []byte("app\n"), 0o755)}} {
		tarBytes, err := testlayer.Tar(entries, 0)
		if err != nil {
			t.Fatal(err)
		}
		data, diffID, annotations := testlayer.Gzip(tarBytes), digest.FromBytes(tarBytes), map[string]string(nil)
		if estargz {
			var blob bytes.Buffer
			l, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			data, diffID, annotations = blob.Bytes(), l.DiffID, map[string]string{artifact.AnnotationTOCDigest: l.TOCDigest.String()}
		}
		img.manifest.Layers = append(img.manifest.Layers, r.pushBlob(t, repo, ocispec.MediaTypeImageLayerGzip, data, annotations))
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
	}
	cfgBytes, _ := json.Marshal(cfg)
	img.manifest.Versioned = specs.Versioned{SchemaVersion: 2}
	img.manifest.MediaType = ocispec.MediaTypeImageManifest
	img.manifest.Config = r.pushBlob(t, repo, ocispec.MediaTypeImageConfig, cfgBytes, nil)
	b, _ := json.Marshal(img.manifest)
	img.manifestDesc = r.pushJSON(t, repo+"@"+digest.FromBytes(b).String(), ocispec.MediaTypeImageManifest, img.manifest)
	img.manifestDesc.Platform = &platform
	return img
}

// pushArtifact pushes a streaming artifact of img; corrupt makes its layers name other
// originals (an artifact that does not convert the image).
func (r *testRegistry) pushArtifact(t *testing.T, repo string, img *testImage, corrupt bool) {
	t.Helper()
	art := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: artifact.ArtifactType, Config: img.manifest.Config,
		Subject:     &ocispec.Descriptor{MediaType: img.manifestDesc.MediaType, Digest: img.manifestDesc.Digest, Size: img.manifestDesc.Size},
		Annotations: map[string]string{artifact.AnnotationPlatform: platforms.Format(*img.manifestDesc.Platform)},
	}
	for i, l := range img.manifest.Layers {
		tarBytes, _ := testlayer.Tar([]testlayer.Entry{testlayer.Reg("converted", []byte{byte(i)}, 0o644)}, 0)
		var blob bytes.Buffer
		conv, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		original := l.Digest.String()
		if corrupt {
			original = digest.FromString("another layer").String()
		}
		art.Layers = append(art.Layers, r.pushBlob(t, repo, ocispec.MediaTypeImageLayerGzip, blob.Bytes(), map[string]string{
			artifact.AnnotationTOCDigest: conv.TOCDigest.String(), artifact.AnnotationOriginalDigest: original,
		}))
	}
	b, _ := json.Marshal(art)
	img.artifact = art
	img.artifactDesc = r.pushJSON(t, repo+"@"+digest.FromBytes(b).String(), ocispec.MediaTypeImageManifest, art)
}

// tagIndex pushes at tag an index of the images; bound images name their artifact. It
// returns the index's digest.
func (r *testRegistry) tagIndex(t *testing.T, ref string, bind bool, imgs ...*testImage) digest.Digest {
	t.Helper()
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, img := range imgs {
		d := img.manifestDesc
		if bind && img.artifactDesc.Digest != "" {
			d.Annotations = map[string]string{artifact.AnnotationBinding: img.artifactDesc.Digest.String()}
			idx.Manifests = append(idx.Manifests, d, img.artifactDesc)
			continue
		}
		idx.Manifests = append(idx.Manifests, d)
	}
	return r.pushJSON(t, ref, ocispec.MediaTypeImageIndex, idx).Digest
}

func TestRegistryResolverDecisions(t *testing.T) {
	ctx := context.Background()
	r := newTestRegistry(t)
	amd64 := ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm64 := ocispec.Platform{OS: "linux", Architecture: "arm64"}

	plain := r.pushImage(t, "app", amd64, false)
	r.pushArtifact(t, "app", plain, false)
	boundIndex := r.tagIndex(t, "app:bound", true, plain)
	r.tagIndex(t, "app:unbound", false, plain)
	arm := r.pushImage(t, "app", arm64, false)
	r.pushArtifact(t, "app", arm, false)
	r.tagIndex(t, "app:multi", true, plain, arm)

	forged := r.pushImage(t, "forged", amd64, false)
	r.pushArtifact(t, "forged", forged, true)
	r.tagIndex(t, "forged:bound", true, forged)
	r.tagIndex(t, "forged:unbound", false, forged)

	esgz := r.pushImage(t, "esgz", amd64, true)
	r.pushJSON(t, "esgz:v1", ocispec.MediaTypeImageManifest, esgz.manifest)

	cases := []struct {
		name       string
		trust      string
		ref        string
		img        *testImage
		layer      int
		wantReason string // streamed with this reason, or
		wantNot    string // not streamed, with this reason
	}{
		{"bound artifact, pull by tag", TrustBound, "app:bound", plain, 1, status.ReasonBound, ""},
		{"bound artifact, pull by the index's digest", TrustBound, "app@" + boundIndex.String(), plain, 0, status.ReasonBound, ""},
		{"bound artifact in a multi-arch index", TrustBound, "app:multi", plain, 0, status.ReasonBound, ""},
		{"arm64 entry of the same index", TrustBound, "app:multi", arm, 0, "", "platform linux/arm64"},
		{"referrer only, default trust", TrustBound, "app:unbound", plain, 0, "", "no-bound-artifact"},
		{"referrer only, referrers trusted", TrustReferrers, "app:unbound", plain, 0, status.ReasonReferrer, ""},
		{"pinned to the manifest digest, referrers trusted", TrustReferrers, "app@" + plain.manifestDesc.Digest.String(), plain, 1, status.ReasonReferrer, ""},
		{"pinned to the manifest digest, default trust", TrustBound, "app@" + plain.manifestDesc.Digest.String(), plain, 1, "", "no-bound-artifact"},
		{"bound artifact that converts other layers", TrustBound, "forged:bound", forged, 0, "", "bound-artifact-invalid"},
		{"referrer that converts other layers", TrustReferrers, "forged:unbound", forged, 0, "", "no-artifact"},
		{"third-party eStargz image", TrustBound, "esgz:v1", esgz, 0, status.ReasonEStargz, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := NewRegistryResolver(ctx, r.reg, []string{"linux/amd64"}, c.trust)
			if err != nil {
				t.Fatal(err)
			}
			l := LayerLabels{
				Target: "chain", ImageRef: r.host + "/" + c.ref,
				Manifest: c.img.manifestDesc.Digest, Layer: c.img.manifest.Layers[c.layer].Digest,
			}
			layer, err := res.Resolve(ctx, l)
			if c.wantNot != "" {
				var ns *NotStreamableError
				if !errors.As(err, &ns) || ns.Reason != c.wantNot {
					t.Fatalf("got %+v, %v; want not streamable: %s", layer.Desc, err, c.wantNot)
				}
				return
			}
			if err != nil {
				t.Fatalf("not streamed: %v", err)
			}
			if layer.Reason != c.wantReason {
				t.Fatalf("streamed for %q, want %q", layer.Reason, c.wantReason)
			}
			want := c.img.manifest.Layers[c.layer]
			if c.wantReason != status.ReasonEStargz {
				want = c.img.artifact.Layers[c.layer]
			}
			if layer.Desc.Digest != want.Digest || layer.TOCDigest.String() != want.Annotations[artifact.AnnotationTOCDigest] {
				t.Fatalf("streams %s (TOC %s), want %s (TOC %s)", layer.Desc.Digest, layer.TOCDigest, want.Digest, want.Annotations[artifact.AnnotationTOCDigest])
			}
			// The blob reads from the registry.
			buf := make([]byte, 2)
			if _, err := layer.Blob.ReadAt(buf, 0); err != nil || buf[0] != 0x1f || buf[1] != 0x8b {
				t.Fatalf("blob read: %x, %v", buf, err)
			}
		})
	}
}

// The layers of one image, resolved together as containerd prepares them, share one
// resolution: the image's referrers are listed once and its manifest fetched once, not once
// per layer.
func TestRegistryResolverAsksOncePerImage(t *testing.T) {
	ctx := context.Background()
	r := newTestRegistry(t)
	img := r.pushImage(t, "app", ocispec.Platform{OS: "linux", Architecture: "amd64"}, false)
	r.pushArtifact(t, "app", img, false)
	r.tagIndex(t, "app:unbound", false, img)
	res, err := NewRegistryResolver(ctx, r.reg, []string{"linux/amd64"}, TrustReferrers)
	if err != nil {
		t.Fatal(err)
	}
	// The referrers API or, where the host has none, the fallback tag sha256-<hex>.
	referrerLookups := func() int { return r.count("/referrers/") + r.count("GET /v2/app/manifests/sha256-") }
	referrersBefore, manifestBefore := referrerLookups(), r.count("GET /v2/app/manifests/"+img.manifestDesc.Digest.String())
	var wg sync.WaitGroup
	errs := make([]error, len(img.manifest.Layers))
	for i, layer := range img.manifest.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := LayerLabels{Target: fmt.Sprintf("chain-%d", i), ImageRef: r.host + "/app:unbound", Manifest: img.manifestDesc.Digest, Layer: layer.Digest}
			got, err := res.Resolve(ctx, l)
			if err == nil && got.Desc.Digest != img.artifact.Layers[i].Digest {
				err = fmt.Errorf("streams %s, want the artifact's layer %s", got.Desc.Digest, img.artifact.Layers[i].Digest)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	if n := referrerLookups() - referrersBefore; n != 1 {
		t.Errorf("the referrers of the image were listed %d times for its %d layers, want once", n, len(img.manifest.Layers))
	}
	if n := r.count("GET /v2/app/manifests/"+img.manifestDesc.Digest.String()) - manifestBefore; n > 1 {
		t.Errorf("the image manifest was fetched %d times for its %d layers, want at most once", n, len(img.manifest.Layers))
	}
}

// A pull after the tag changed sees the change (rill create --force rebinds the tag), while
// the layers of one pull share one resolution.
func TestRegistryResolverSeesARebind(t *testing.T) {
	ctx := context.Background()
	r := newTestRegistry(t)
	img := r.pushImage(t, "app", ocispec.Platform{OS: "linux", Architecture: "amd64"}, false)
	r.pushArtifact(t, "app", img, false)
	r.tagIndex(t, "app:v1", true, img)
	l := LayerLabels{Target: "chain", ImageRef: r.host + "/app:v1", Manifest: img.manifestDesc.Digest, Layer: img.manifest.Layers[0].Digest}
	for _, c := range []struct {
		name     string
		fresh    time.Duration
		wantSame bool
	}{
		{"within one pull", time.Hour, true},
		{"a later pull", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r.tagIndex(t, "app:v1", true, img)
			res, err := NewRegistryResolver(ctx, r.reg, []string{"linux/amd64"}, TrustBound)
			if err != nil {
				t.Fatal(err)
			}
			res.fresh = c.fresh
			if _, err := res.Resolve(ctx, l); err != nil {
				t.Fatalf("bound artifact not streamed: %v", err)
			}
			r.tagIndex(t, "app:v1", false, img) // the binding goes away
			_, err = res.Resolve(ctx, l)
			var ns *NotStreamableError
			switch {
			case c.wantSame && err != nil:
				t.Fatalf("the second layer of the pull resolved again: %v", err)
			case !c.wantSame && (!errors.As(err, &ns) || ns.Reason != "no-bound-artifact"):
				t.Fatalf("a later pull still streams the artifact the tag no longer binds: %v", err)
			}
		})
	}
}
