package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

	reg, err := remote.New(remote.WithHostsDir(hostsDir), remote.WithCredentials(remote.Anonymous()), remote.WithDefaultScheme("http"))
	if err != nil {
		t.Fatal(err)
	}
	testPinnedToIndex(t, env, img, reg)
	testPinnedDigest(t, env, img)
	testRecordedProfile(t, env, img, rill)

	rill("delete", img.Ref)
	repo := env.Registry.Host() + "/rill/debian-cli"
	for _, ref := range []string{img.Ref, repo + "@" + img.ManifestDigest.String(), repo + "@" + artifact.String(), repo + ":" + remote.FallbackTag(digest.Digest(img.ManifestDigest.String()))} {
		if _, err := reg.Resolve(ctx, ref); !errdefs.IsNotFound(err) {
			t.Errorf("after rill delete, %s resolves (%v)", ref, err)
		}
	}
}

// testPinnedToIndex pulls the image pinned to the digest of the index its tag now names: that
// index binds the artifact, so the pull streams with the default trust, like the tag's.
func testPinnedToIndex(t *testing.T, env *harness.Env, img pushedImage, reg *remote.Registry) {
	ctx := t.Context()
	index, err := reg.Resolve(ctx, img.Ref)
	if err != nil {
		t.Fatalf("resolving %s: %v", img.Ref, err)
	}
	pinned := img.Ref[:strings.LastIndex(img.Ref, ":")] + "@" + index.Digest.String()
	assertSnapshotsGone(t, env, img) // else containerd reuses the layers and asks rill nothing
	from := logSize(t, env)
	if _, err := env.CRI.Pull(ctx, pinned); err != nil {
		t.Fatalf("crictl pull %s: %v", pinned, err)
	}
	assertUnpackedByRill(t, env, img)
	log := logSince(t, env, from)
	if n := strings.Count(grepLines(log, "layer streamed"), "reason=bound-artifact"); n != len(img.ChainIDs) {
		t.Errorf("a pull pinned to the binding index %s: %d of %d layers streamed for the reason bound-artifact; rill's decisions:\n%s",
			index.Digest, n, len(img.ChainIDs), grepLines(log, "layer "))
	}
	assertLayersRemote(t, env, img, true)
	if err := env.CRI.RemoveImage(ctx, pinned); err != nil {
		t.Fatalf("crictl rmi %s: %v", pinned, err)
	}
}

// testPinnedDigest pulls the image pinned to its platform manifest's digest, which no tag's
// binding vouches for: the node finds the artifact only as a referrer, which it honours only
// with streaming.trust = "referrers". With the default trust the pull is in full (rill logs
// why); with referrers trusted it streams. The default is restored for what follows.
func testPinnedDigest(t *testing.T, env *harness.Env, img pushedImage) {
	ctx := t.Context()
	pinned := img.Ref[:strings.LastIndex(img.Ref, ":")] + "@" + img.ManifestDigest.String()
	// pull pulls pinned into a node that holds none of its layers, and returns what rill
	// logged about them.
	pull := func(what string) string {
		t.Helper()
		assertSnapshotsGone(t, env, img) // else containerd reuses the layers and asks rill nothing
		from := logSize(t, env)
		if _, err := env.CRI.Pull(ctx, pinned); err != nil {
			t.Fatalf("crictl pull %s (%s): %v", pinned, what, err)
		}
		assertUnpackedByRill(t, env, img)
		return logSince(t, env, from)
	}

	log := pull("trust bound")
	decisions := grepLines(log, "layer ")
	if streamed := grepLines(log, "layer streamed"); streamed != "" {
		t.Errorf("with the default trust, a pull pinned to the manifest's digest streamed:\n%s", streamed)
	}
	if n := strings.Count(grepLines(log, "layer pulled in full"), "reason=no-bound-artifact"); n != len(img.ChainIDs) {
		t.Errorf("with the default trust, %d of %d layers were pulled in full for the reason no-bound-artifact; rill's decisions:\n%s", n, len(img.ChainIDs), decisions)
	}
	assertLayersRemote(t, env, img, false)
	if err := env.CRI.RemoveImage(ctx, pinned); err != nil {
		t.Fatalf("crictl rmi %s: %v", pinned, err)
	}

	restart := func(lines ...string) {
		t.Helper()
		if err := env.Snapshotter.SetStreaming(lines...); err != nil {
			t.Fatal(err)
		}
		if err := env.Snapshotter.Stop(ctx); err != nil {
			t.Fatalf("stopping rill-snapshotter: %v", err)
		}
		if err := env.StartSnapshotter(ctx); err != nil {
			t.Fatalf("starting rill-snapshotter with %q: %v", lines, err)
		}
	}
	restart(`trust = "referrers"`)
	log = pull("trust referrers")
	streamed := grepLines(log, "layer streamed")
	if n := len(regexp.MustCompile(`reason=referrer(\s|$)`).FindAllString(streamed, -1)); n != len(img.ChainIDs) {
		t.Errorf("with streaming.trust = \"referrers\", %d of %d layers streamed for the reason referrer; rill's decisions:\n%s", n, len(img.ChainIDs), grepLines(log, "layer "))
	}
	assertLayersRemote(t, env, img, true)
	if err := env.CRI.RemoveImage(ctx, pinned); err != nil {
		t.Fatalf("crictl rmi %s: %v", pinned, err)
	}
	restart()
}

// assertLayersRemote checks that each layer of img is a snapshot rill streams (remote), or
// that none is.
func assertLayersRemote(t *testing.T, env *harness.Env, img pushedImage, remote bool) {
	t.Helper()
	infos, err := env.Snapshotter.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	streamed := map[string]bool{}
	for _, info := range infos {
		streamed[chainOf(info.Name)] = info.Labels[labelRemote] != ""
	}
	for i, chain := range img.ChainIDs {
		if streamed[chain.String()] != remote {
			t.Errorf("layer %d (chain %s): streamed %v, want %v", i, chain, streamed[chain.String()], remote)
		}
	}
}

// logSize is the length of rill-snapshotter's log now (what logSince reads from).
func logSize(t *testing.T, env *harness.Env) int64 {
	t.Helper()
	fi, err := os.Stat(env.Snapshotter.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logSince returns rill-snapshotter's log from offset from on.
func logSince(t *testing.T, env *harness.Env, from int64) string {
	t.Helper()
	data, err := os.ReadFile(env.Snapshotter.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if from > int64(len(data)) {
		from = 0 // the log was rewritten
	}
	return string(data[from:])
}

// grepLines returns the lines of log that contain what.
func grepLines(log, what string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
