package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/manifest"
)

// runTimeout bounds one container run (the fixture's checker hashes its 300 MB file under both
// of its names).
const runTimeout = 5 * time.Minute

// testImage is the life of one image on a node: pull through CRI into rill, restart rill, run
// through CRI and ctr (both must print exactly what the layers describe), remove, and get the
// disk space back.
func testImage(t *testing.T, env *harness.Env, img pushedImage) {
	ctx := t.Context()
	baseline, err := env.Snapshotter.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
		t.Fatalf("crictl pull: %v", err)
	}
	t.Logf("crictl pull %s: %s", img.Ref, time.Since(began).Round(time.Millisecond))
	assertUnpackedByRill(t, env, img)
	before := assertSnapshotsInRill(t, env, img)
	// These images are unpacked in full (they are no streaming artifacts): their files are on
	// rill's disk, at least as many bytes as the compressed layers.
	pulled, err := env.Snapshotter.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rill's snapshots use %s after the pull (%s before)", describeUsage(pulled), describeUsage(baseline))
	if pulled-baseline < img.Size {
		t.Errorf("rill's snapshots grew by %s with the pull, less than the image's %s of compressed layers",
			describeUsage(pulled-baseline), describeUsage(img.Size))
	}

	began = time.Now()
	if err := env.Snapshotter.Stop(ctx); err != nil {
		t.Fatalf("stopping rill-snapshotter (SIGTERM must end it with status 0): %v", err)
	}
	stopped := time.Now()
	if err := env.StartSnapshotter(ctx); err != nil {
		t.Fatalf("starting rill-snapshotter again on the same root: %v", err)
	}
	t.Logf("restarted rill-snapshotter: stopped in %s, ready again in %s (pid %d now)",
		stopped.Sub(began).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond),
		env.Snapshotter.Process().PID())
	if after := assertSnapshotsInRill(t, env, img); !equalSets(before, after) {
		t.Errorf("rill's snapshots changed across a restart:\nbefore: %v\nafter:  %v", before, after)
	}

	t.Run("crictl", func(t *testing.T) {
		began := time.Now()
		res, err := env.CRI.RunInPod(ctx, podName(img), img.Ref, img.Command, runTimeout)
		if err != nil {
			t.Fatalf("running the image through CRI: %v", err)
		}
		t.Logf("container ran in %s (exit %d) through CRI", time.Since(began).Round(time.Millisecond), res.ExitCode)
		assertOutput(t, img, res.ExitCode, res.Stdout, res.Stderr)
	})
	t.Run("ctr", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, runTimeout)
		defer cancel()
		began := time.Now()
		id := podName(img) + "-ctr"
		// ctr mixes its own warnings (e.g. containerd's cgroup v1 deprecation) into the
		// container's stderr: only the exit status and stdout are the container's alone.
		stdout, _, err := env.Ctr.RunContainer(ctx, harness.CRINamespace, img.Ref, id, img.Command...)
		if err != nil {
			t.Errorf("ctr run: %v", err)
		}
		t.Logf("container ran in %s through ctr", time.Since(began).Round(time.Millisecond))
		assertStdout(t, img, stdout)
	})

	t.Run("remove", func(t *testing.T) {
		if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
			t.Fatalf("crictl rmi: %v", err)
		}
		assertSnapshotsGone(t, env, img)
		assertDiskUsageBack(t, env, baseline, 2*time.Minute)
	})
}

// podName is a CRI-friendly name for the image's test pod.
func podName(img pushedImage) string {
	name := img.Repository
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	return strings.NewReplacer("/", "-", ".", "-").Replace(name)
}

// assertOutput checks a container's result against what the image must print.
func assertOutput(t *testing.T, img pushedImage, exit int, stdout, stderr string) {
	t.Helper()
	if exit != 0 {
		t.Errorf("%v exited with %d; stderr:\n%s", img.Command, exit, stderr)
	}
	if stderr != "" {
		t.Errorf("%v wrote to stderr:\n%s", img.Command, stderr)
	}
	assertStdout(t, img, stdout)
}

// assertStdout checks a container's stdout against what the image must print.
func assertStdout(t *testing.T, img pushedImage, stdout string) {
	t.Helper()
	if diff := manifest.Diff(img.Want, stdout, 40); diff != "" {
		t.Errorf("the container saw content that differs from the image's layers (- expected, + seen in the container):\n%s", diff)
	}
}

func equalSets(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[string]bool{}
	for _, s := range a {
		set[s] = true
	}
	for _, s := range b {
		if !set[s] {
			return false
		}
	}
	return true
}

func describeUsage(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
