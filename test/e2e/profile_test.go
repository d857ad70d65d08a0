package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/snapshotter"
	"github.com/rillstream/rill/test/harness"
)

// testRecordedProfile is the loop a user runs to make an image start fast: a first, cold start
// streams the image while rill records what it opens; rill writes that as a prefetch profile;
// `rill create --force --prefetch-profile` bakes it into the artifact; the next cold start
// fetches the profile's files at mount, before the container asks — they then read with the
// registry gone.
func testRecordedProfile(t *testing.T, env *harness.Env, img pushedImage, rill func(args ...string) string) {
	ctx := t.Context()
	files := []string{"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0", "/etc/debian_version"}
	command := append([]string{"/bin/cat"}, files...)
	var want strings.Builder
	for _, p := range files {
		want.WriteString(fileInLayers(t, img.TestImage, p))
	}
	// Through the proxy: another reference, so a recording of its own, and bytes counted.
	ref := env.Proxy.Host() + "/" + strings.TrimPrefix(img.Ref, env.Registry.Host()+"/")

	// The recording run.
	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		t.Fatalf("crictl pull %s: %v", ref, err)
	}
	res, err := env.CRI.RunInPod(ctx, podName(img)+"-recording", ref, command, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != want.String() {
		t.Fatalf("the recording run: exit %d, %d bytes (want %d), stderr %q", res.ExitCode, len(res.Stdout), want.Len(), res.Stderr)
	}
	profileFile := snapshotter.ProfilePath(env.Snapshotter.Root(), ref)
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(profileFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rill wrote no prefetch profile at %s within a minute of the start; its log:\n%s", profileFile, grepLog(t, env, "profile"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	f, err := os.Open(profileFile)
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := artifact.ParseProfile(f)
	f.Close()
	if err != nil {
		t.Fatalf("rill create would refuse the profile rill recorded: %v", err)
	}
	t.Logf("rill recorded a profile of %d files: %v", len(recorded), recorded)
	// cat opens its arguments in order, after its own binary and libraries.
	last := -1
	for _, p := range append([]string{"/usr/bin/cat"}, files...) {
		i := slices.Index(recorded, strings.TrimPrefix(p, "/")) // profiles name paths in the layer

		if i < 0 || i < last {
			t.Fatalf("the recorded profile %v does not hold %s after the files opened before it", recorded, p)
		}
		last = i
	}
	if err := env.CRI.RemoveImage(ctx, ref); err != nil {
		t.Fatal(err)
	}

	// The profile, as rill wrote it, into the artifact.
	rill("create", "--force", "--prefetch-profile", profileFile, img.Ref)

	// The next cold start prefetches the profile at mount.
	before := env.Proxy.BytesDown()
	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		t.Fatalf("crictl pull %s: %v", ref, err)
	}
	deadline = time.Now().Add(time.Minute)
	for !strings.Contains(grepLog(t, env, "prefetch done"), fmt.Sprintf("files=%d", len(recorded))) {
		if time.Now().After(deadline) {
			t.Fatalf("no prefetch of the recorded profile's %d files within a minute; rill's log:\n%s", len(recorded), grepLog(t, env, "prefetch"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	fetched := env.Proxy.BytesDown() - before
	t.Logf("the pull and the prefetch of the recorded profile fetched %.1f MiB", float64(fetched)/(1<<20))
	if fetched < int64(want.Len())/4 {
		t.Errorf("the pull and prefetch fetched %d bytes, too few to hold the profile's files (%d bytes uncompressed): the start was not cold", fetched, want.Len())
	}
	env.Proxy.SetOutage(true)
	res, err = env.CRI.RunInPod(ctx, podName(img)+"-prefetched", ref, command, 2*time.Minute)
	env.Proxy.SetOutage(false)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != want.String() {
		t.Errorf("reading the prefetched files with the registry gone: exit %d, %d bytes (want %d), stderr %q", res.ExitCode, len(res.Stdout), want.Len(), res.Stderr)
	}
	if err := env.CRI.RemoveImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
}
