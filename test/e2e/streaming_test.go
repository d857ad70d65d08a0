package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rillstream/rill/snapshotter"
	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/images"
)

// labelRemote marks rill's committed snapshots of streamed layers.
const labelRemote = "dev.rill.remote.blob"

// testStreamedImage pulls an eStargz image through containerd and rill, through a proxy that
// counts the registry's bytes: the pull fetches a small fraction of the image, a container that
// reads a few files starts after fetching little more, and a container that reads every
// packaged file sees exactly the original content.
func testStreamedImage(t *testing.T, env *harness.Env, original *images.TestImage, smallRead []string, smallWant string) {
	ctx := t.Context()
	img, err := images.EStargz(ctx, original, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := img.Push(ctx, env.Registry.Host())
	if err != nil {
		t.Fatal(err)
	}
	// Pull and run through the counting proxy.
	ref := env.Proxy.Host() + "/" + img.Repository
	streamed := pushedImage{TestImage: img, PushedImage: &harness.PushedImage{
		Ref: ref, ManifestDigest: pushed.ManifestDigest, ConfigDigest: pushed.ConfigDigest,
		DiffIDs: pushed.DiffIDs, ChainIDs: pushed.ChainIDs, Size: pushed.Size,
	}}
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

// testFaults takes the registry away and crashes rill: what was read stays readable, what was
// not fails within the read timeout and reads once the registry is back, and after a SIGKILL
// the layers are mounted again from disk.
func testFaults(t *testing.T, env *harness.Env, img pushedImage, smallRead []string, smallWant string) {
	ctx := t.Context()
	const unread = "/usr/share/common-licenses/GPL-3"
	unreadWant := fileInLayers(t, img.TestImage, unread)
	run := func(name string, command []string) *harness.ContainerResult {
		t.Helper()
		res, err := env.CRI.RunInPod(ctx, podName(img)+"-"+name, img.Ref, command, 2*time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return res
	}

	env.Proxy.SetOutage(true)
	if res := run("outage-local", smallRead); res.ExitCode != 0 || res.Stdout != smallWant {
		t.Errorf("with the registry down, a container reading only local data: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	began := time.Now()
	res := run("outage-remote", []string{"/bin/cat", unread})
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Input/output error") {
		t.Errorf("with the registry down, reading data that is not local: exit %d, %d bytes, stderr %q; want an I/O error", res.ExitCode, len(res.Stdout), res.Stderr)
	}
	if res.Stdout != "" && !strings.HasPrefix(unreadWant, res.Stdout) {
		t.Errorf("with the registry down, cat printed bytes that are not the file's")
	}
	t.Logf("with the registry down, the read failed after %s", time.Since(began).Round(time.Millisecond))
	env.Proxy.SetOutage(false)
	if res := run("registry-back", []string{"/bin/cat", unread}); res.ExitCode != 0 || res.Stdout != unreadWant {
		t.Errorf("with the registry back: exit %d, %d bytes (want %d), stderr %q", res.ExitCode, len(res.Stdout), len(unreadWant), res.Stderr)
	}

	if err := env.Snapshotter.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.StartSnapshotter(ctx); err != nil {
		t.Fatalf("starting rill-snapshotter after SIGKILL: %v", err)
	}
	if res := run("after-sigkill", []string{"/bin/cat", unread}); res.ExitCode != 0 || res.Stdout != unreadWant {
		t.Errorf("after rill was killed and restarted: exit %d, %d bytes, stderr %q", res.ExitCode, len(res.Stdout), res.Stderr)
	}
	if log := grepLog(t, env, "streamed layer restored"); log == "" {
		t.Errorf("rill did not restore its streamed layers after SIGKILL")
	}
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
	sock := filepath.Join(filepath.Dir(env.Snapshotter.Socket()), "status.sock")
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://rill/v1/layers")
	if err != nil {
		t.Fatalf("rill's status socket: %v", err)
	}
	defer resp.Body.Close()
	var layers []snapshotter.LayerStatus
	if err := json.NewDecoder(resp.Body).Decode(&layers); err != nil {
		t.Fatal(err)
	}
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
			if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(path, "/") {
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				content, found = string(b), true
			}
		}
		r.Close()
	}
	if !found {
		t.Fatalf("%s is in no layer of %s", path, img.Repository)
	}
	return content
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
