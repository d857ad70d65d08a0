// Package e2e runs rill-snapshotter under a real containerd (CRI and ctr), runc and a
// distribution registry, and checks what a user relies on: images pulled through rill run and
// see exactly the files their layers hold, before and after a restart of the snapshotter, and
// removing an image gives rill's disk space back.
//
// The tests need root and the tools script/setup-test-env.sh installs; they fail (never skip)
// when something is missing.
package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// bigFileSize is the size of the fixture's large file: large enough that its content really
// travels (and fills rill's disk measurably), small enough for a run of a few minutes.
const bigFileSize = 300 << 20

func TestE2E(t *testing.T) {
	env := startEnv(t)
	fixture, debian := pushImages(t, env)

	t.Run("fixture", func(t *testing.T) { testImage(t, env, fixture) })
	t.Run("debian", func(t *testing.T) { testImage(t, env, debian) })
	t.Run("ordinary images are pulled in full", func(t *testing.T) { assertFellBack(t, env, "no-bound-artifact") })
	t.Run("only the configured platforms stream", func(t *testing.T) { testPlatforms(t, env) })
	t.Run("estargz-debian", func(t *testing.T) {
		streamed := pushStreamed(t, env, debian.TestImage)
		restartWithStreaming(t, env, faultStreaming()...)
		t.Run("streams", func(t *testing.T) {
			testStreamedImage(t, env, streamed, []string{"/bin/cat", "/etc/debian_version"},
				fileInLayers(t, debian.TestImage, "etc/debian_version"))
		})
		t.Run("a full cache disk", func(t *testing.T) { testFullCacheDisk(t, env, streamed) })
		t.Run("background fetch resumes after an outage", func(t *testing.T) { testBackgroundResumes(t, env, streamed) })
	})
}

// startEnv starts registry, rill-snapshotter (with its metrics endpoint) and containerd; the
// cleanup stops them and asserts that nothing outlives the test.
func startEnv(t *testing.T) *harness.Env {
	t.Helper()
	metrics, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	env, err := harness.Start(t.Context(), harness.Options{Logf: t.Logf, MetricsAddress: metrics})
	if err != nil {
		t.Fatalf("starting the test environment: %v", err)
	}
	t.Cleanup(func() {
		processes, dir := env.Processes(), env.Dir
		if err := env.Close(context.Background(), t.Failed()); err != nil {
			t.Errorf("stopping the test environment: %v", err)
		}
		for _, p := range processes {
			if p.Alive() {
				t.Errorf("%s (pid %d) still runs after the environment was closed", p.Name(), p.PID())
			}
		}
		if mounts, err := harness.MountsUnder(dir); err != nil || len(mounts) > 0 {
			t.Errorf("mounts left below %s after the environment was closed: %v (%v)", dir, mounts, err)
		}
	})
	return env
}

// pushedImage is a test image in the registry.
type pushedImage struct {
	*images.TestImage
	*harness.PushedImage
}

// pushImages builds the fixture and debian images (concurrently) and pushes them.
func pushImages(t *testing.T, env *harness.Env) (fixture, debian pushedImage) {
	t.Helper()
	ctx := t.Context()
	began := time.Now()
	var (
		wg                   sync.WaitGroup
		fixtureErr, debErr   error
		fixtureImg, debImage *images.TestImage
	)
	wg.Go(func() {
		fixtureImg, fixtureErr = images.Fixture(ctx, env.RepoRoot, t.TempDir(), images.FixtureOptions{BigFileSize: bigFileSize})
	})
	wg.Go(func() { debImage, debErr = images.Debian(ctx, images.DefaultCacheDir, t.Logf) })
	wg.Wait()
	if fixtureErr != nil {
		t.Fatalf("building the fixture image: %v", fixtureErr)
	}
	if debErr != nil {
		t.Fatalf("building the debian image: %v", debErr)
	}
	t.Logf("built the test images in %s", time.Since(began).Round(time.Millisecond))
	for _, p := range []struct {
		img *images.TestImage
		out *pushedImage
	}{{fixtureImg, &fixture}, {debImage, &debian}} {
		began := time.Now()
		pushed, err := p.img.Push(ctx, env.Registry.Host())
		if err != nil {
			t.Fatalf("pushing %s: %v", p.img.Repository, err)
		}
		*p.out = pushedImage{TestImage: p.img, PushedImage: pushed}
		t.Logf("pushed %s (%d layers, %d MB) in %s", pushed.Ref, len(pushed.DiffIDs), pushed.Size>>20,
			time.Since(began).Round(time.Millisecond))
	}
	return fixture, debian
}
