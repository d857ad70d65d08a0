package e2e

import (
	"archive/tar"
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// cacheDiskSize is the size of the disk under rill's cache in testFullCacheDisk; the container
// reads four times as much.
const cacheDiskSize = 4 << 20

// testFullCacheDisk runs the streamed image with rill's cache on a small disk that fills up:
// the container reads files larger in total than the disk and sees exactly their content
// (reads are served from the network when the cache cannot store), and rill counts and logs
// the cache's write errors. The cache's own disk is back afterwards.
func testFullCacheDisk(t *testing.T, env *harness.Env, img pushedImage) {
	ctx := t.Context()
	infos, err := env.Snapshotter.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chains := map[string]bool{}
	for _, c := range img.ChainIDs {
		chains[c.String()] = true
	}
	for _, info := range infos {
		if chains[chainOf(info.Name)] {
			t.Fatalf("rill still holds snapshot %s of %s (the scenario before did not remove the image): this one needs a pull that streams", info.Name, img.Ref)
		}
	}

	if err := env.Snapshotter.Stop(ctx); err != nil {
		t.Fatalf("stopping rill-snapshotter: %v", err)
	}
	if err := env.Snapshotter.MountCacheDisk(cacheDiskSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := env.Snapshotter.Stop(ctx); err != nil {
			t.Errorf("stopping rill-snapshotter: %v", err)
		}
		if err := env.Snapshotter.UnmountCacheDisk(); err != nil {
			t.Error(err)
		}
		if err := env.StartSnapshotter(ctx); err != nil {
			t.Errorf("starting rill-snapshotter on its own cache disk again: %v", err)
		}
	})
	if err := env.StartSnapshotter(ctx); err != nil {
		t.Fatalf("starting rill-snapshotter with its cache on a %s tmpfs: %v", mib(cacheDiskSize), err)
	}

	files, want := largeFiles(t, img.TestImage, 4*cacheDiskSize)
	if _, err := env.CRI.Pull(ctx, img.Ref); err != nil {
		t.Fatalf("crictl pull %s: %v", img.Ref, err)
	}
	assertLayersRemote(t, env, img, true)
	res, err := env.CRI.RunInPod(ctx, podName(img)+"-full-cache", img.Ref, append([]string{"/usr/bin/sha256sum"}, files...), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != want {
		t.Errorf("sha256sum of %d files (%s) with rill's cache disk full: exit %d, stderr %q, stdout:\n%s\nwant:\n%s",
			len(files), mib(4*cacheDiskSize), res.ExitCode, res.Stderr, res.Stdout, want)
	}
	noSpace := metric(t, env, "rill_cache_write_errors_total", map[string]string{"reason": "no_space"})
	unstored := metric(t, env, "rill_fs_cache_errors_total", map[string]string{"op": "write"})
	t.Logf("reading %d files (%s) through a %s cache disk: %v cache writes failed for lack of space, %v verified chunks not stored",
		len(files), mib(4*cacheDiskSize), mib(cacheDiskSize), noSpace, unstored)
	if noSpace == 0 {
		t.Errorf("rill_cache_write_errors_total{reason=\"no_space\"} is 0 after reading %s through a %s cache disk", mib(4*cacheDiskSize), mib(cacheDiskSize))
	}
	if unstored == 0 {
		t.Errorf("rill_fs_cache_errors_total{op=\"write\"} is 0 after reading %s through a %s cache disk", mib(4*cacheDiskSize), mib(cacheDiskSize))
	}
	if log := grepLog(t, env, "not stored in the cache"); log == "" {
		t.Errorf("rill did not log the chunks it could not store in its full cache")
	}

	if err := env.CRI.RemoveImage(ctx, img.Ref); err != nil {
		t.Fatal(err)
	}
	assertSnapshotsGone(t, env, img)
}

// largeFiles returns the largest regular files of the image's layers of at most 4 MiB, enough
// of them to hold at least total bytes, and the output of sha256sum on them.
func largeFiles(t *testing.T, img *images.TestImage, total int64) ([]string, string) {
	t.Helper()
	type file struct {
		path string
		size int64
		sum  string
	}
	byPath := map[string]file{} // the last layer's version of each path
	walkLayers(t, img, func(h *tar.Header, content io.Reader) {
		p := "/" + strings.TrimPrefix(h.Name, "./")
		if h.Typeflag != tar.TypeReg || h.Size < 1<<20 || h.Size > 4<<20 {
			delete(byPath, p)
			return
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, content); err != nil {
			t.Fatal(err)
		}
		byPath[p] = file{path: p, size: h.Size, sum: fmt.Sprintf("%x", sum.Sum(nil))}
	})
	all := slices.Collect(maps.Values(byPath))
	slices.SortFunc(all, func(a, b file) int { return cmp.Or(cmp.Compare(b.size, a.size), strings.Compare(a.path, b.path)) })
	var (
		paths []string
		out   strings.Builder
		sum   int64
	)
	for _, f := range all {
		if sum >= total {
			break
		}
		paths = append(paths, f.path)
		fmt.Fprintf(&out, "%s  %s\n", f.sum, f.path)
		sum += f.size
	}
	if sum < total {
		t.Fatalf("the image's files of 1 to 4 MiB hold %s, less than the %s to read", mib(sum), mib(total))
	}
	return paths, out.String()
}
