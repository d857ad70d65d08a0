package convert

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
)

// Bad input gives an error of the kind an operator (and the CLI's exit code) tells apart, and
// leaves nothing a node would use: no referrer, the tag as it was.
func TestCreateRefusesBadInput(t *testing.T) {
	host := startRegistry(t, "referrers-api", nil)
	reg := testRegistry(t)
	c := testConverter(t, reg)
	oneFile := [][]testlayer.Entry{{testlayer.Reg("bin/x", []byte("x"), 0o755)}}

	amd := pushImage(t, reg, host+"/app:v1", imageSpec{platform: linuxAMD64, layers: twoLayers()})
	res, err := c.Create(testCtx(t), amd.ref, CreateOptions{Bind: true})
	if err != nil {
		t.Fatal(err)
	}
	artifact := res.Artifacts[0].Artifact.Digest

	cases := []struct {
		name  string
		ref   func(t *testing.T) string
		is    func(error) bool
		check *testImage // when set: no artifact may refer to it, its tag unchanged
	}{
		{"reference that does not parse", func(*testing.T) string { return "Not A/Reference::x" }, errdefs.IsInvalidArgument, nil},
		{"image that does not exist", func(*testing.T) string { return host + "/missing:v1" }, errdefs.IsNotFound, nil},
		{"the streaming artifact itself", func(*testing.T) string { return host + "/app@" + artifact.String() }, is(ErrIsStreamingArtifact), nil},
		{"platform not streamed", func(t *testing.T) string {
			return pushImage(t, reg, host+"/arm:v1", imageSpec{platform: linuxARM64, layers: oneFile}).ref
		}, is(ErrUnsupportedPlatform), nil},
		{"index without a streamed platform", func(t *testing.T) string {
			ims := map[string]*testImage{"linux/arm64/v8": pushManifest(t, reg, host+"/armidx", imageSpec{platform: linuxARM64, layers: oneFile})}
			pushIndex(t, reg, host+"/armidx:v1", ims, []string{"linux/arm64/v8"})
			return host + "/armidx:v1"
		}, is(ErrNoSupportedPlatform), nil},
		{"zstd layers", func(t *testing.T) string {
			return pushImage(t, reg, host+"/zstd:v1", imageSpec{platform: linuxAMD64, layers: oneFile, layerMediaType: "application/vnd.oci.image.layer.v1.tar+zstd"}).ref
		}, is(ErrUnsupportedMediaType), nil},
		{"an artifact, not an image", func(t *testing.T) string {
			return pushImage(t, reg, host+"/chart:v1", imageSpec{platform: linuxAMD64, layers: oneFile, configMediaType: "application/vnd.cncf.helm.config.v1+json"}).ref
		}, is(ErrNotRunnable), nil},
	}
	var wrongDiff *testImage
	cases = append(cases, struct {
		name  string
		ref   func(t *testing.T) string
		is    func(error) bool
		check *testImage
	}{"layer that does not match its diff_id", func(t *testing.T) string {
		wrongDiff = pushImage(t, reg, host+"/wrongdiff:v1", imageSpec{platform: linuxAMD64, layers: twoLayers(), wrongDiffID: 2})
		return wrongDiff.ref
	}, is(ErrCorruptLayer), nil})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.ref(t)
			_, err := c.Create(testCtx(t), ref, CreateOptions{Bind: true})
			if err == nil || !tc.is(err) {
				t.Fatalf("create %s: %v", ref, err)
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
	assertReferrers(t, reg, wrongDiff, nil)
	if d, err := reg.Resolve(testCtx(t), wrongDiff.ref); err != nil || d.Digest != wrongDiff.manifest.Digest {
		t.Errorf("the tag of a failed create changed: %v %v", d.Digest, err)
	}
}

func is(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }

// A registry that serves a layer whose bytes do not match its digest: create fails naming
// the corruption, and pushes no artifact manifest and no binding.
func TestCreateRefusesCorruptLayer(t *testing.T) {
	var corrupt digest.Digest
	host := startRegistry(t, "referrers-api", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if corrupt == "" || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+corrupt.String()) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if len(body) > 100 {
				body[100] ^= 0xff
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	})
	reg := testRegistry(t)
	c := testConverter(t, reg)
	img := pushImage(t, reg, host+"/app:v1", imageSpec{platform: linuxAMD64, layers: twoLayers()})
	corrupt = img.layers[0].Digest

	_, err := c.Create(testCtx(t), img.ref, CreateOptions{Bind: true})
	if !errors.Is(err, ErrCorruptLayer) || !errdefs.IsDataLoss(err) {
		t.Fatalf("create with a corrupt layer: %v", err)
	}
	if !strings.Contains(err.Error(), corrupt.String()) {
		t.Errorf("the error does not name the corrupt layer: %v", err)
	}
	assertReferrers(t, reg, img, nil)
	if d, err := reg.Resolve(testCtx(t), img.ref); err != nil || d.Digest != img.manifest.Digest {
		t.Errorf("the tag changed: %v %v", d.Digest, err)
	}
}

// A registry that refuses the credentials: an Unauthorized error, whatever the command.
func TestRefusedAuth(t *testing.T) {
	host := startRegistry(t, "referrers-api", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "rill" || p != "right" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	creds := func(user, pass string) remote.Credentials {
		return remote.CredentialsFunc(func(context.Context, string) (string, string, error) { return user, pass, nil })
	}
	good, err := remote.New(remote.WithHostsDir(t.TempDir()), remote.WithCredentials(creds("rill", "right")))
	if err != nil {
		t.Fatal(err)
	}
	img := pushImage(t, good, host+"/app:v1", imageSpec{platform: linuxAMD64, layers: twoLayers()})

	for _, who := range []struct {
		name  string
		creds remote.Credentials
	}{{"anonymous", remote.Anonymous()}, {"wrong password", creds("rill", "wrong")}} {
		t.Run(who.name, func(t *testing.T) {
			reg, err := remote.New(remote.WithHostsDir(t.TempDir()), remote.WithCredentials(who.creds), remote.WithRetry(1, 0, 0))
			if err != nil {
				t.Fatal(err)
			}
			c, err := New(reg, WithTempDir(t.TempDir()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Create(testCtx(t), img.ref, CreateOptions{Bind: true})
			if !errdefs.IsUnauthorized(err) {
				t.Errorf("create: %v, want Unauthorized", err)
			}
			if _, err := c.Delete(testCtx(t), img.ref, false); !errdefs.IsUnauthorized(err) {
				t.Errorf("delete: %v, want Unauthorized", err)
			}
		})
	}
	// With the right credentials everything works, deletes included.
	c, err := New(good, WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(testCtx(t), img.ref, CreateOptions{Bind: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(testCtx(t), img.ref, false); err != nil {
		t.Fatal(err)
	}
}

// A push to the tag while the artifact is being built wins: the artifact stays a referrer,
// the tag is not bound, and the error says to run create again.
func TestCreateDoesNotBindAMovedTag(t *testing.T) {
	host := startRegistry(t, "referrers-api", nil)
	reg := testRegistry(t)
	img := pushImage(t, reg, host+"/app:v1", imageSpec{platform: linuxAMD64, layers: twoLayers()})
	var newer *testImage
	c := testConverter(t, reg, WithProgress(func(p Progress) {
		if p.Phase == PhaseDone && p.Index == 0 && newer == nil {
			newer = pushImage(t, reg, host+"/app:v1", imageSpec{platform: linuxAMD64, layers: [][]testlayer.Entry{{testlayer.Reg("new", []byte("new"), 0o644)}}})
		}
	}), WithParallelism(1))
	res, err := c.Create(testCtx(t), img.ref, CreateOptions{Bind: true})
	if !errors.Is(err, ErrTagMoved) || !errdefs.IsConflict(err) {
		t.Fatalf("create while the tag moved: %v %+v", err, res)
	}
	if d, err := reg.Resolve(testCtx(t), img.ref); err != nil || d.Digest != newer.manifest.Digest {
		t.Errorf("the tag names %v (%v), want the newer push %s", d.Digest, err, newer.manifest.Digest)
	}
	ds, err := reg.Referrers(testCtx(t), host+"/app", img.manifest.Digest, artifact.ArtifactType)
	if err != nil || len(ds) != 1 {
		t.Errorf("the artifact of the converted image is not its referrer: %v %v", ds, err)
	}
}
