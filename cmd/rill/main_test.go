package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/rillstream/rill/convert"
)

// startRegistry starts go-containerregistry's registry (with the referrers API), behind
// wrap when set, and returns its host:port.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// pushRandom pushes an image of random layers for os/arch at ref.
func pushRandom(t *testing.T, ref, arch string) v1.Hash {
	t.Helper()
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

// rill runs the CLI in-process and returns its exit code, stdout and stderr.
func rill(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCreateShowVerifyDelete(t *testing.T) {
	host := startRegistry(t, nil)
	ref := host + "/app:v1"
	manifest := pushRandom(t, ref, "amd64")
	flags := []string{"--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", t.TempDir() + "/none.json"}

	code, out, errOut := rill(t, append([]string{"create", ref, "--chunk-size", "65536"}, flags...)...)
	if code != exitOK || !strings.Contains(out, "created the streaming artifact") || !strings.Contains(out, "bound to the tag") {
		t.Fatalf("create: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "layer 1/2") || !strings.Contains(errOut, "layer 2/2") || !strings.Contains(errOut, ": done:") {
		t.Errorf("create reported no progress per layer:\n%s", errOut)
	}

	code, out, errOut = rill(t, append([]string{"create", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "already has the streaming artifact") {
		t.Fatalf("create again: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	code, out, errOut = rill(t, append([]string{"show", ref, "--json"}, flags...)...)
	if code != exitOK {
		t.Fatalf("show: exit %d: %s", code, errOut)
	}
	var st convert.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("show --json: %v\n%s", err, out)
	}
	if !st.Bound || len(st.Manifests) != 1 || st.Manifests[0].Manifest.Digest.String() != manifest.String() || len(st.Manifests[0].Artifacts) != 1 || !st.Manifests[0].Artifacts[0].Bound {
		t.Fatalf("show --json: %s", out)
	}
	code, out, _ = rill(t, append([]string{"show", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "linux/amd64") || !strings.Contains(out, "in use") || !strings.Contains(out, "PROFILE") || !strings.Contains(out, "none") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}

	// A profile for the image that has an artifact: it reaches the (new) artifact, and show
	// says so.
	profile := filepath.Join(t.TempDir(), "profile.txt")
	if err := os.WriteFile(profile, []byte("/etc/a\n/etc/b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = rill(t, append([]string{"create", ref, "--prefetch-profile", profile}, flags...)...)
	if code != exitOK || !strings.Contains(out, "with the new prefetch profile, its layers reused") || !strings.Contains(out, "bound to the tag") {
		t.Fatalf("create with a profile: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, out, _ = rill(t, append([]string{"show", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "2 paths") || !strings.Contains(out, "superseded") {
		t.Fatalf("show after a profile was added: exit %d\n%s", code, out)
	}

	code, out, errOut = rill(t, append([]string{"verify", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "ok, 2 layers match") {
		t.Fatalf("verify: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}

	code, out, errOut = rill(t, append([]string{"delete", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "deleted streaming artifact") {
		t.Fatalf("delete: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, _, errOut = rill(t, append([]string{"show", ref}, flags...)...)
	if code != exitNotFound {
		t.Fatalf("show after delete: exit %d, want %d (not found): %s", code, exitNotFound, errOut)
	}
}

// Each failure an operator must tell apart has its exit code and a message saying what is
// wrong.
func TestExitCodes(t *testing.T) {
	host := startRegistry(t, nil)
	locked := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		})
	})
	pushRandom(t, host+"/arm:v1", "arm64")
	pushRandom(t, host+"/app:v1", "amd64")
	flags := []string{"--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", t.TempDir() + "/none.json"}
	if code, out, errOut := rill(t, append([]string{"create", host + "/app:v1"}, flags...)...); code != exitOK {
		t.Fatalf("create: %d %s %s", code, out, errOut)
	}
	var st convert.Status
	_, out, _ := rill(t, append([]string{"show", "--json", host + "/app:v1"}, flags...)...)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	artifact := st.Manifests[0].Artifacts[0].Descriptor.Digest

	cases := []struct {
		name string
		args []string
		code int
		say  string
	}{
		{"no command", nil, exitUsage, "Usage"},
		{"unknown command", []string{"frobnicate", host + "/app:v1"}, exitUsage, "unknown command"},
		{"no image", []string{"create"}, exitUsage, "name an IMAGE"},
		{"unparsable reference", []string{"create", "UPPER/case::x"}, exitUsage, "is not an image reference"},
		{"bad platform", []string{"create", "--platform", "linux/", host + "/app:v1"}, exitUsage, "--platform"},
		{"not found", []string{"create", host + "/missing:v1"}, exitNotFound, "not found"},
		{"unauthorized", []string{"create", locked + "/app:v1"}, exitUnauthorized, "docker login"},
		{"unsupported platform", []string{"create", host + "/arm:v1"}, exitUnsupportedPlatform, "streaming platforms are [linux/amd64]"},
		{"the artifact itself", []string{"create", host + "/app@" + artifact.String()}, exitIsStreaming, "is a streaming artifact"},
		{"missing profile file", []string{"create", "--prefetch-profile", "/nonexistent", host + "/app:v1"}, exitUsage, "--prefetch-profile"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if len(args) > 0 && args[0] != "frobnicate" {
				args = append(append([]string{}, args...), flags...)
			}
			code, out, errOut := rill(t, args...)
			if code != c.code || !strings.Contains(out+errOut, c.say) {
				t.Fatalf("rill %v: exit %d, want %d saying %q\nstdout: %s\nstderr: %s", args, code, c.code, c.say, out, errOut)
			}
		})
	}
}
