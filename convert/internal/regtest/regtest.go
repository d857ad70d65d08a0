// Package regtest gives the tests of convert's subpackages a registry client and small
// images to push; the registries themselves come from internal/regtest.
package regtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
)

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

// Kinds are the registries every scenario runs against.
func Kinds() []string { return regtest.Kinds() }

// Start starts a registry of kind (see internal/regtest).
func Start(t testing.TB, kind string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	return regtest.Start(t, kind, wrap)
}

// Distribution starts the distribution registry binary (see internal/regtest).
func Distribution(t testing.TB, extra string) string {
	t.Helper()
	return regtest.Distribution(t, extra)
}
