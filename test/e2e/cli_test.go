package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// cliTimeout bounds one rill command (create converts the ~250 MB debian layer).
const cliTimeout = 10 * time.Minute

// The registry side as an operator runs it, with the rill binary: create binds a streaming
// artifact to the debian image's tag; show lists it; a node pulls the original tag through
// CRI and the container runs and sees exactly the image's files; delete removes the image and
// its artifact together.
func TestCLI(t *testing.T) {
	env := startEnv(t)
	ctx := t.Context()
	bin := filepath.Join(t.TempDir(), "rill")
	if err := harness.BuildGo(ctx, env.RepoRoot, "./cmd/rill", bin, false); err != nil {
		t.Fatalf("building rill: %v", err)
	}
	deb, err := images.Debian(ctx, images.DefaultCacheDir, t.Logf)
	if err != nil {
		t.Fatalf("building the debian image: %v", err)
	}
	deb.Repository = "rill/debian-cli:bookworm"
	pushed, err := deb.Push(ctx, env.Registry.Host())
	if err != nil {
		t.Fatalf("pushing %s: %v", deb.Repository, err)
	}
	img := pushedImage{TestImage: deb, PushedImage: pushed}
	hostsDir := t.TempDir()
	rill := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, cliTimeout)
		defer cancel()
		args = append(args, "--plain-http", "--hosts-dir", hostsDir, "--docker-config", filepath.Join(hostsDir, "none.json"))
		cmd := exec.CommandContext(ctx, bin, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("rill %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
		}
		t.Logf("rill %s:\n%s", args[0], out)
		return string(out)
	}

	rill("create", img.Ref)
	var st convert.Status
	if err := json.Unmarshal([]byte(rill("show", "--json", img.Ref)), &st); err != nil {
		t.Fatalf("rill show --json: %v", err)
	}
	if !st.Bound || len(st.Manifests) != 1 || st.Manifests[0].Manifest.Digest.String() != img.ManifestDigest.String() ||
		len(st.Manifests[0].Artifacts) != 1 || st.Manifests[0].Artifacts[0].Problem != "" || !st.Manifests[0].Artifacts[0].Bound {
		t.Fatalf("rill show does not list one bound, usable artifact of %s: %+v", img.ManifestDigest, st)
	}
	artifact := st.Manifests[0].Artifacts[0].Descriptor.Digest
	if out := rill("verify", img.Ref); !strings.Contains(out, "ok") {
		t.Fatalf("rill verify: %s", out)
	}

	// A node pulls the original tag (now the binding index) and runs the image.
	if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
		t.Fatalf("crictl pull of the bound tag: %v", err)
	}
	assertUnpackedByRill(t, env, img)
	assertStreamed(t, env, img.PushedImage, "bound-artifact")
	res, err := env.CRI.RunInPod(ctx, podName(img), img.Ref, img.Command, runTimeout)
	if err != nil {
		t.Fatalf("running the image through CRI: %v", err)
	}
	assertOutput(t, img, res.ExitCode, res.Stdout, res.Stderr)
	if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
		t.Fatalf("crictl rmi: %v", err)
	}

	testRecordedProfile(t, env, img, rill)

	rill("delete", img.Ref)
	reg, err := remote.New(remote.WithHostsDir(hostsDir), remote.WithCredentials(remote.Anonymous()), remote.WithDefaultScheme("http"))
	if err != nil {
		t.Fatal(err)
	}
	repo := env.Registry.Host() + "/rill/debian-cli"
	for _, ref := range []string{img.Ref, repo + "@" + img.ManifestDigest.String(), repo + "@" + artifact.String(), repo + ":" + remote.FallbackTag(digest.Digest(img.ManifestDigest.String()))} {
		if _, err := reg.Resolve(ctx, ref); !errdefs.IsNotFound(err) {
			t.Errorf("after rill delete, %s resolves (%v)", ref, err)
		}
	}
}
