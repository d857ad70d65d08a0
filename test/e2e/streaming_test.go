package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// labelRemote marks rill's committed snapshots of streamed layers.
const labelRemote = "dev.rill.remote.blob"

// pushStreamed converts original to eStargz and pushes it; the image it returns is named
// through the byte-counting proxy, so that pulls and reads of it are measured (and the proxy's
// faults reach them).
func pushStreamed(t *testing.T, env *harness.Env, original *images.TestImage) pushedImage {
	t.Helper()
	ctx := t.Context()
	img, err := images.EStargz(ctx, original, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := img.Push(ctx, env.Registry.Host())
	if err != nil {
		t.Fatal(err)
	}
	return pushedImage{TestImage: img, PushedImage: &harness.PushedImage{
		Ref: env.Proxy.Host() + "/" + img.Repository, ManifestDigest: pushed.ManifestDigest, ConfigDigest: pushed.ConfigDigest,
		DiffIDs: pushed.DiffIDs, ChainIDs: pushed.ChainIDs, Size: pushed.Size,
	}}
}

// faultStreaming is rill's [streaming] config for the streamed-image scenarios: no background
// fetch, so that a file no container has read stays missing from the cache (else a read of it
// with the registry down or corrupting would succeed, depending on timing), and the read
// timeout the fault checks bound.
func faultStreaming() []string {
	return []string{"background_fetch = false", fmt.Sprintf("read_timeout = %q", faultReadTimeout)}
}

// faultReadTimeout is rill's read timeout in the streamed-image scenarios; hangSlack is how
// much longer than it a failing read may take (container start and exit included) before the
// test calls it a hang.
const (
	faultReadTimeout = 5 * time.Second
	hangSlack        = 30 * time.Second
)

// restartWithStreaming restarts rill-snapshotter with lines as the extra lines of its
// [streaming] config; the test's cleanup restarts it with the harness's defaults.
func restartWithStreaming(t *testing.T, env *harness.Env, lines ...string) {
	t.Helper()
	restart := func(ctx context.Context, lines ...string) error {
		if err := env.Snapshotter.SetStreaming(lines...); err != nil {
			return err
		}
		if err := env.Snapshotter.Stop(ctx); err != nil {
			return fmt.Errorf("stopping rill-snapshotter: %w", err)
		}
		if err := env.StartSnapshotter(ctx); err != nil {
			return fmt.Errorf("starting rill-snapshotter with %q: %w", lines, err)
		}
		return nil
	}
	if err := restart(t.Context(), lines...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restart(context.Background()); err != nil {
			t.Errorf("restoring rill-snapshotter's default config: %v", err)
		}
	})
}

// testStreamedImage pulls an eStargz image (pushStreamed) through containerd and rill, through
// a proxy that counts the registry's bytes: the pull fetches a small fraction of the image, a
// container that reads a few files starts after fetching little more, the registry's faults
// fail only reads of what is not local (testFaults), and a container that reads every
// packaged file sees exactly the original content.
func testStreamedImage(t *testing.T, env *harness.Env, streamed pushedImage, smallRead []string, smallWant string) {
	ctx := t.Context()
	img, pushed, ref := streamed.TestImage, streamed.PushedImage, streamed.Ref
	baseline, err := env.Snapshotter.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}

	env.Proxy.ResetCounters()
	began := time.Now()
	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		t.Fatalf("crictl pull %s: %v", ref, err)
	}
	pulled := env.Proxy.BytesDown()
	t.Logf("pulled %s in %s: %s of %s from the registry", ref, time.Since(began).Round(time.Millisecond), mib(pulled), mib(pushed.Size))

	assertStreamed(t, env, pushed, "estargz")
	assertStatusLists(t, env, pushed)
	if pulled > pushed.Size/10 {
		t.Errorf("the pull fetched %s of a %s image: more than a tenth", mib(pulled), mib(pushed.Size))
	}

	res, err := env.CRI.RunInPod(ctx, podName(streamed)+"-small", ref, smallRead, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ran := env.Proxy.BytesDown()
	t.Logf("a container reading %v started and exited after %s in all from the registry", smallRead, mib(ran))
	if res.ExitCode != 0 || res.Stdout != smallWant {
		t.Errorf("%v in the streamed image: exit %d, stdout %q (want %q), stderr %q", smallRead, res.ExitCode, res.Stdout, smallWant, res.Stderr)
	}
	if ran > pushed.Size/4 {
		t.Errorf("running %v fetched %s of a %s image: more than a quarter", smallRead, mib(ran), mib(pushed.Size))
	}

	testSecondNamespace(t, env, streamed, smallRead, smallWant)
	testFaults(t, env, streamed, smallRead, smallWant)

	// Every file of every package, read through rill, is the original.
	stdout, stderr, err := env.Ctr.RunContainer(ctx, harness.CRINamespace, ref, podName(streamed)+"-all", img.Command...)
	if err != nil {
		t.Fatalf("ctr run %v: %v\n%s", img.Command, err, stderr)
	}
	assertStdout(t, streamed, stdout)
	t.Logf("reading the whole image fetched %s in all (image %s)", mib(env.Proxy.BytesDown()), mib(pushed.Size))

	if err := env.CRI.RemoveImage(ctx, ref); err != nil {
		t.Fatal(err)
	}
	assertSnapshotsGone(t, env, streamed)
	assertDiskUsageBack(t, env, baseline, time.Minute)
	mounts, err := harness.MountsUnder(env.Snapshotter.Root())
	if err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under rill's root after the image was removed: %v (%v)", mounts, err)
	}
	if n := dataBytes(t, filepath.Join(env.Snapshotter.Root(), "cache", "layers")); n != 0 {
		t.Errorf("rill's cache still holds %s of the removed image's layers", mib(n))
	}
}

// dataBytes is the disk space of the regular files below dir, as du counts it.
func dataBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() && !strings.HasSuffix(p, "journal") {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Files of the debian image that no container reads before testFaults does, far apart in the
// eStargz blob (GPL-3 near 29 MB, cputable near 36 MB, dpkg's status near 96 MB of it), so
// that no read of one brings another along (rill fetches up to 256 KiB of the blob's
// following files with a miss); one for each fault.
const (
	unreadOutage  = "/usr/share/common-licenses/GPL-3"
	unreadStall   = "/usr/share/dpkg/cputable"
	unreadCorrupt = "/var/lib/dpkg/status"
)

// testFaults makes the registry fail while containers read the streamed image — down, stalled
// (connections accepted, never answered), corrupting blob data — and crashes rill: what was
// read stays readable; a read of what was not ends with EIO within the read timeout (nothing
// hangs, and never with wrong bytes, corrupted ones counted as verification failures) and
// succeeds once the registry is back; after a SIGKILL the layers are mounted again from disk.
func testFaults(t *testing.T, env *harness.Env, img pushedImage, smallRead []string, smallWant string) {
	ctx := t.Context()
	run := func(name string, command []string) *harness.ContainerResult {
		t.Helper()
		res, err := env.CRI.RunInPod(ctx, podName(img)+"-"+name, img.Ref, command, 2*time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return res
	}
	// readFails reads path with the registry failing (how): the read must end with an I/O
	// error, within the read timeout and slack, having printed at most a prefix of the file.
	readFails := func(name, how, path, want string) {
		t.Helper()
		bound := faultReadTimeout + hangSlack
		res, err := env.CRI.RunInPod(ctx, podName(img)+"-"+name, img.Ref, []string{"/bin/cat", path}, bound)
		if err != nil {
			t.Fatalf("%s, cat %s did not end within %s (read timeout %s + %s): a read hangs (%v)", how, path, bound, faultReadTimeout, hangSlack, err)
		}
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Input/output error") {
			t.Errorf("%s, cat %s (not local): exit %d, %d bytes, stderr %q; want an I/O error", how, path, res.ExitCode, len(res.Stdout), res.Stderr)
		}
		if !strings.HasPrefix(want, res.Stdout) {
			t.Errorf("%s, cat %s printed %d bytes that are not the file's (never wrong bytes: an error instead)", how, path, len(res.Stdout))
		}
		if res.Duration > bound {
			t.Errorf("%s, cat %s took %s to fail: more than the read timeout %s + %s", how, path, res.Duration.Round(time.Millisecond), faultReadTimeout, hangSlack)
		}
		t.Logf("%s, cat %s ended after %s (exit %d)", how, path, res.Duration.Round(time.Millisecond), res.ExitCode)
	}
	readWorks := func(name, when, path, want string) {
		t.Helper()
		if res := run(name, []string{"/bin/cat", path}); res.ExitCode != 0 || res.Stdout != want {
			t.Errorf("%s, cat %s: exit %d, %d bytes (want %d), stderr %q", when, path, res.ExitCode, len(res.Stdout), len(want), res.Stderr)
		}
	}

	// The registry down.
	outageWant := fileInLayers(t, img.TestImage, unreadOutage)
	env.Proxy.SetOutage(true)
	if res := run("outage-local", smallRead); res.ExitCode != 0 || res.Stdout != smallWant {
		t.Errorf("with the registry down, a container reading only local data: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	readFails("outage-remote", "with the registry down", unreadOutage, outageWant)
	env.Proxy.SetOutage(false)
	readWorks("registry-back", "with the registry back", unreadOutage, outageWant)

	// The registry stalled: it accepts connections and never answers.
	stallWant := fileInLayers(t, img.TestImage, unreadStall)
	env.Proxy.SetStall(true)
	readFails("stalled", "with the registry stalled", unreadStall, stallWant)
	env.Proxy.SetStall(false)
	readWorks("stall-over", "with the registry answering again", unreadStall, stallWant)

	// The registry's blob data corrupted on the way: rill verifies every chunk against the
	// TOC, so a read fails rather than return wrong bytes, and the failures are counted.
	corruptWant := fileInLayers(t, img.TestImage, unreadCorrupt)
	failures := metric(t, env, "rill_fs_chunk_verification_failures_total", nil)
	corrupted := env.Proxy.Corrupted()
	env.Proxy.SetCorrupt(true)
	readFails("corrupt", "with the blob data corrupted", unreadCorrupt, corruptWant)
	env.Proxy.SetCorrupt(false)
	if env.Proxy.Corrupted() == corrupted {
		t.Errorf("the proxy corrupted no blob range response: rill fetched nothing to read %s", unreadCorrupt)
	}
	if got := metric(t, env, "rill_fs_chunk_verification_failures_total", nil); got <= failures {
		t.Errorf("rill_fs_chunk_verification_failures_total went from %v to %v with %d corrupted responses: the failures were not counted",
			failures, got, env.Proxy.Corrupted()-corrupted)
	}
	if log := grepLog(t, env, "chunk failed verification"); log == "" {
		t.Errorf("rill logged no read failing for a chunk that failed verification")
	}
	readWorks("corruption-over", "with the blob data intact again", unreadCorrupt, corruptWant)

	if err := env.Snapshotter.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.StartSnapshotter(ctx); err != nil {
		t.Fatalf("starting rill-snapshotter after SIGKILL: %v", err)
	}
	readWorks("after-sigkill", "after rill was killed and restarted", unreadOutage, outageWant)
	if log := grepLog(t, env, "streamed layer restored"); log == "" {
		t.Errorf("rill did not restore its streamed layers after SIGKILL")
	}
}

// metric reads a metric of rill-snapshotter (the sum of its samples with labels).
func metric(t *testing.T, env *harness.Env, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := env.Snapshotter.Metric(t.Context(), name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// assertStreamed checks that every layer of img is a streamed layer in rill, streamed for
// reason.
func assertStreamed(t *testing.T, env *harness.Env, img *harness.PushedImage, reason string) {
	t.Helper()
	infos, err := env.Snapshotter.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	streamedLayers := map[string]bool{}
	for _, info := range infos {
		if info.Labels[labelRemote] != "" {
			streamedLayers[chainOf(info.Name)] = true
		}
	}
	for i, chain := range img.ChainIDs {
		if !streamedLayers[chain.String()] {
			t.Errorf("layer %d (chain %s) of %s was not streamed; rill's log says:\n%s", i, chain, img.Ref, grepLog(t, env, "layer "))
		}
	}
	if log := grepLog(t, env, "layer streamed"); !strings.Contains(log, "reason="+reason) {
		t.Errorf("rill did not log streaming for reason %s:\n%s", reason, log)
	}
}

// assertStatusLists checks that rill's status socket lists the image's streamed layers.
func assertStatusLists(t *testing.T, env *harness.Env, img *harness.PushedImage) {
	t.Helper()
	layers := statusLayers(t, env)
	if len(layers) < len(img.ChainIDs) {
		t.Fatalf("rill status lists %d streamed layers, the image has %d: %+v", len(layers), len(img.ChainIDs), layers)
	}
	for _, l := range layers {
		if l.Reason == "" || l.Blob == "" || l.Bytes <= 0 {
			t.Errorf("incomplete layer status: %+v", l)
		}
	}
}

// assertFellBack checks that rill logged the full-pull decision for an ordinary image, with
// its reason.
func assertFellBack(t *testing.T, env *harness.Env, reason string) {
	t.Helper()
	log := grepLog(t, env, "layer pulled in full")
	if !strings.Contains(log, "reason="+reason) {
		t.Errorf("rill did not log the full pull of an ordinary image with reason %s; its decisions:\n%s", reason, log)
	}
}

func grepLog(t *testing.T, env *harness.Env, what string) string {
	t.Helper()
	data, err := os.ReadFile(env.Snapshotter.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, what) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// fileInLayers returns the content of path in the last layer that has it.
func fileInLayers(t *testing.T, img *images.TestImage, path string) string {
	t.Helper()
	var content string
	found := false
	walkLayers(t, img, func(h *tar.Header, r io.Reader) {
		if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(path, "/") {
			b, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			content, found = string(b), true
		}
	})
	if !found {
		t.Fatalf("%s is in no layer of %s", path, img.Repository)
	}
	return content
}

// walkLayers calls fn with every entry of the image's layers, bottom layer first, and a
// reader of its content.
func walkLayers(t *testing.T, img *images.TestImage, fn func(h *tar.Header, content io.Reader)) {
	t.Helper()
	for _, l := range img.Spec.Layers {
		r, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.Close()
				t.Fatal(err)
			}
			fn(h, tr)
		}
		r.Close()
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// testPlatforms pushes a multi-arch index of eStargz images: the amd64 image streams, the
// arm64 one (a platform rill is not configured to stream) is pulled in full, with the reason
// logged.
func testPlatforms(t *testing.T, env *harness.Env) {
	ctx := t.Context()
	dir := t.TempDir()
	spec := func(arch string) harness.ImageSpec {
		lw, err := harness.NewLayerWriter(filepath.Join(dir, arch+".tar.gz"), gzip.BestSpeed)
		if err != nil {
			t.Fatal(err)
		}
		content := "built for " + arch + "\n"
		if err := lw.Add(&tar.Header{Typeflag: tar.TypeReg, Name: "arch", Mode: 0o644, Size: int64(len(content))}, strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		l, err := lw.Close()
		if err != nil {
			t.Fatal(err)
		}
		esgz, err := images.EStargz(ctx, &images.TestImage{Repository: "rill/multiarch", Spec: harness.ImageSpec{Layers: []*harness.Layer{l}, Architecture: arch}}, dir)
		if err != nil {
			t.Fatal(err)
		}
		return esgz.Spec
	}
	ref := env.Registry.Host() + "/rill/multiarch:v1"
	pushed, err := harness.PushIndex(ctx, ref, spec("amd64"), spec("arm64"))
	if err != nil {
		t.Fatal(err)
	}
	amd64, arm64 := pushed[0], pushed[1]
	amd64.Ref, arm64.Ref = ref, ref

	if _, stderr, err := env.Ctr.Run(ctx, harness.CRINamespace, "images", "pull", "--platform", "linux/arm64", "--snapshotter", harness.SnapshotterName,
		"--hosts-dir", env.CertsDir, ref); err != nil {
		t.Fatalf("ctr pull --platform linux/arm64: %v\n%s", err, stderr)
	}
	if log := grepLog(t, env, "layer pulled in full"); !strings.Contains(log, `reason="platform linux/arm64"`) {
		t.Errorf("the arm64 pull was not logged as a full pull for its platform:\n%s", log)
	}
	infos, err := env.Snapshotter.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, info := range infos {
		if chainOf(info.Name) == arm64.ChainIDs[0].String() {
			found = true
			if info.Labels[labelRemote] != "" {
				t.Errorf("the arm64 layer was streamed")
			}
		}
	}
	if !found {
		t.Errorf("the arm64 layer was not unpacked into rill")
	}

	if _, err := env.CRI.Pull(ctx, ref); err != nil {
		t.Fatal(err)
	}
	assertStreamed(t, env, amd64, "estargz")
	if err := env.CRI.RemoveImage(ctx, ref); err != nil {
		t.Errorf("crictl rmi: %v", err)
	}
}

// testSecondNamespace pulls the streamed image, already pulled through CRI, into another
// containerd namespace (ctr's): its layers are shared, not pulled in full, a container there
// reads the image, and removing the image there leaves it in the first namespace.
func testSecondNamespace(t *testing.T, env *harness.Env, streamed pushedImage, smallRead []string, smallWant string) {
	ctx := t.Context()
	const ns = "second"
	shared := map[string]string{"result": "stream", "reason": "shared"}
	before := metric(t, env, "rill_layer_decisions_total", shared)
	env.Proxy.ResetCounters()
	if _, stderr, err := env.Ctr.Run(ctx, ns, "images", "pull", "--snapshotter", harness.SnapshotterName, "--hosts-dir", env.CertsDir, streamed.Ref); err != nil {
		t.Fatalf("ctr -n %s pull: %v\n%s", ns, err, stderr)
	}
	if got := metric(t, env, "rill_layer_decisions_total", shared) - before; got != float64(len(streamed.ChainIDs)) {
		t.Errorf("%v layers shared with namespace %s, want all %d; rill's decisions:\n%s", got, ns, len(streamed.ChainIDs), grepLog(t, env, "layer "))
	}
	pulled := env.Proxy.BytesDown()
	t.Logf("pulled %s into namespace %s too: %s from the registry, its layers shared", streamed.Ref, ns, mib(pulled))
	if pulled > streamed.Size/20 {
		t.Errorf("pulling into namespace %s fetched %s of a %s image: its layers were not shared", ns, mib(pulled), mib(streamed.Size))
	}
	stdout, stderr, err := env.Ctr.RunContainer(ctx, ns, streamed.Ref, podName(streamed)+"-second-ns", smallRead...)
	if err != nil || stdout != smallWant {
		t.Errorf("%v in namespace %s: stdout %q (want %q), %v\n%s", smallRead, ns, stdout, smallWant, err, stderr)
	}
	if _, stderr, err := env.Ctr.Run(ctx, ns, "images", "rm", "--sync", streamed.Ref); err != nil {
		t.Fatalf("ctr -n %s images rm: %v\n%s", ns, err, stderr)
	}
	assertStreamed(t, env, streamed.PushedImage, "estargz")
}
