package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/convert/internal/regtest"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
)

// The registries of these tests: go-containerregistry's in-process one (with the referrers
// API) and the real distribution registry (without it: the tag-schema fallback). This repeats
// the little of remote/internal/regtest that convert needs; regtest is internal to remote.

// The registries and client of these tests come from convert/internal/regtest.
func registryKinds() []string { return regtest.Kinds() }

func startRegistry(t testing.TB, kind string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	return regtest.Start(t, kind, wrap)
}

func testCtx(t testing.TB) context.Context { t.Helper(); return regtest.Ctx(t) }

func testRegistry(t testing.TB) *remote.Registry { t.Helper(); return regtest.Registry(t) }

// testConverter is a Converter over reg with small chunks, a fixed clock and temp files in
// the test's directory.
func testConverter(t testing.TB, reg *remote.Registry, opts ...Option) *Converter {
	t.Helper()
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := []Option{
		WithLayerOptions(LayerOptions{ChunkSize: 64 << 10}),
		WithTempDir(t.TempDir()),
		WithClock(func() time.Time { clock = clock.Add(time.Second); return clock }),
	}
	c, err := New(reg, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testImage is an image pushed for a test.
type testImage struct {
	ref      string // host/repo:tag
	manifest ocispec.Descriptor
	// layers are the original tar bytes, bottom first.
	tars    [][]byte
	entries [][]testlayer.Entry
	layers  []ocispec.Descriptor
}

// imageSpec describes an image to push: its platform and layers.
type imageSpec struct {
	platform string
	layers   [][]testlayer.Entry
	// corrupt, when set, changes the config's diff_id of that layer (index+1; 0 for none).
	wrongDiffID int
	// layerMediaType and configMediaType override the media types of layers and config.
	layerMediaType, configMediaType string
}

// pushManifest pushes the layers, config and manifest of spec to repo (host/repo) by digest.
func pushManifest(t testing.TB, reg *remote.Registry, repo string, spec imageSpec) *testImage {
	t.Helper()
	ctx := testCtx(t)
	im := &testImage{}
	var diffIDs []digest.Digest
	for i, entries := range spec.layers {
		tb, err := testlayer.Tar(entries, 0)
		if err != nil {
			t.Fatal(err)
		}
		gz := testlayer.Gzip(tb)
		mt := ocispec.MediaTypeImageLayerGzip
		if spec.layerMediaType != "" {
			mt = spec.layerMediaType
		}
		d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(gz), Size: int64(len(gz))}
		if err := reg.PushBlob(ctx, repo, d, bytes.NewReader(gz)); err != nil {
			t.Fatal(err)
		}
		diff := digest.FromBytes(tb)
		if spec.wrongDiffID == i+1 {
			diff = digest.FromString("not the layer")
		}
		diffIDs = append(diffIDs, diff)
		im.tars = append(im.tars, tb)
		im.entries = append(im.entries, entries)
		im.layers = append(im.layers, d)
	}
	pl, err := ParsePlatforms([]string{spec.platform})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: pl[0],
		Config:   ocispec.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	cd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	if spec.configMediaType != "" {
		cd.MediaType = spec.configMediaType
	}
	if err := reg.PushBlob(ctx, repo, cd, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: im.layers}
	m.SchemaVersion = 2
	raw, _ := json.Marshal(m)
	desc, err := reg.PushManifest(ctx, repo+"@"+digest.FromBytes(raw).String(), ocispec.MediaTypeImageManifest, raw)
	if err != nil {
		t.Fatal(err)
	}
	im.manifest = desc
	return im
}

// pushImage pushes a single-platform image at ref (host/repo:tag).
func pushImage(t testing.TB, reg *remote.Registry, ref string, spec imageSpec) *testImage {
	t.Helper()
	repo, _, _ := strings.Cut(ref, ":")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo = ref[:i]
	}
	im := pushManifest(t, reg, repo, spec)
	raw, err := reg.FetchManifest(testCtx(t), repo+"@"+im.manifest.Digest.String(), im.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PushManifest(testCtx(t), ref, ocispec.MediaTypeImageManifest, raw); err != nil {
		t.Fatal(err)
	}
	im.ref = ref
	return im
}

// pushIndex pushes an index of the images at ref and returns its descriptor.
func pushIndex(t testing.TB, reg *remote.Registry, ref string, ims map[string]*testImage, order []string) ocispec.Descriptor {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, p := range order {
		d := ims[p].manifest
		pl, err := ParsePlatforms([]string{p})
		if err != nil {
			t.Fatal(err)
		}
		d.Platform = &pl[0]
		d.Annotations = map[string]string{"org.example.kept": p}
		idx.Manifests = append(idx.Manifests, d)
		ims[p].ref = ref
	}
	idx.Annotations = map[string]string{"org.example.index": "kept"}
	raw, _ := json.Marshal(idx)
	desc, err := reg.PushManifest(testCtx(t), ref, ocispec.MediaTypeImageIndex, raw)
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

// The platforms of the test images.
const (
	linuxAMD64 = "linux/amd64"
	linuxARM64 = "linux/arm64/v8"
)
