package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testRegistry is a Registry for tests: no host configuration, anonymous, fast retries.
func testRegistry(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	base := []Option{
		WithHostsDir(t.TempDir()),
		WithCredentials(Anonymous()),
		WithRetry(5, 10*time.Millisecond, 100*time.Millisecond),
		WithRequestTimeout(10 * time.Second),
	}
	r, err := New(append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func descOf(mediaType string, b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// pushBlob pushes b to the repository of ref and returns its descriptor.
func pushBlob(t testing.TB, r *Registry, ref string, b []byte) ocispec.Descriptor {
	t.Helper()
	d := descOf("application/octet-stream", b)
	if err := r.PushBlob(testCtx(t), ref, d, bytes.NewReader(b)); err != nil {
		t.Fatalf("push blob: %v", err)
	}
	return d
}

// testImage is an image pushed for a test: one layer, a config, a manifest.
type testImage struct {
	layer, config, manifest ocispec.Descriptor
	layerData               []byte
	manifestData            []byte
}

func pushImage(t testing.TB, r *Registry, ref string, seed uint64, platform ocispec.Platform) testImage {
	t.Helper()
	var img testImage
	img.layerData = randomBytes(64<<10, seed)
	img.layer = pushBlob(t, r, ref, img.layerData)
	img.layer.MediaType = ocispec.MediaTypeImageLayerGzip
	cfg, _ := json.Marshal(ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{img.layer.Digest}}})
	img.config = pushBlob(t, r, ref, cfg)
	img.config.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: img.config, Layers: []ocispec.Descriptor{img.layer}}
	m.SchemaVersion = 2
	img.manifestData, _ = json.Marshal(m)
	d, err := r.PushManifest(testCtx(t), ref, ocispec.MediaTypeImageManifest, img.manifestData)
	if err != nil {
		t.Fatalf("push manifest: %v", err)
	}
	img.manifest = d
	return img
}

// timed fails the test when f takes longer than limit.
func timed(t *testing.T, limit time.Duration, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	f()
	d := time.Since(start)
	if d > limit {
		t.Fatalf("took %s, more than %s", d, limit)
	}
	return d
}
