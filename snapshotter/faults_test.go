package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/cache"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

// errRegistryDown is what an unreachable registry answers.
var errRegistryDown = errors.New("dial tcp 127.0.0.1:5000: connection refused")

// outageBlob is a layer blob whose data (below dataEnd: not its TOC and footer) cannot be
// read while down is set, as when the registry is down after the layer was mounted.
type outageBlob struct {
	localBlob
	dataEnd int64
	down    *atomic.Bool
}

func (b outageBlob) ReadAt(p []byte, off int64) (int, error) {
	if b.down.Load() && off < b.dataEnd {
		return 0, errRegistryDown
	}
	return b.localBlob.ReadAt(p, off)
}

// outageResolver is an originalResolver whose blobs are outageBlobs.
type outageResolver struct {
	*originalResolver
	down *atomic.Bool
}

func (r *outageResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	rl, err := r.originalResolver.Resolve(ctx, l)
	if err != nil {
		return rl, err
	}
	layer := r.layers[l.Layer]
	toc, err := rillfs.LoadTOC(ctx, bytes.NewReader(layer.blob), int64(len(layer.blob)), layer.conv.TOCDigest, rillfs.Limits{})
	if err != nil {
		return rl, err
	}
	rl.Blob = outageBlob{localBlob: localBlob{bytes.NewReader(layer.blob)}, dataEnd: toc.Offset, down: r.down}
	return rl, nil
}

// waitUntil polls cond until it holds, or fails the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func onlyLayer(t *testing.T, sn *Snapshotter) LayerStatus {
	t.Helper()
	st := sn.Status()
	if len(st) != 1 {
		t.Fatalf("status lists %d layers, want 1: %+v", len(st), st)
	}
	return st[0]
}

// A registry outage while a layer is completed in the background only delays it: the fetch
// resumes with backoff once the registry answers, and the layer is then verified against the
// original. Meanwhile `rill status` says it is incomplete, how often it was retried, and why.
func TestBackgroundFetchResumesAfterAnOutage(t *testing.T) {
	requireRoot(t)
	local, digests := newLocalResolver(t, []testlayer.Entry{
		testlayer.Reg("a", testlayer.RandomBytes(1, 300<<10), 0o644),
		testlayer.Reg("b", testlayer.RandomBytes(2, 300<<10), 0o644),
	})
	down := &atomic.Bool{}
	down.Store(true)
	r := &outageResolver{originalResolver: &originalResolver{localResolver: local}, down: down}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	store, err := cache.Open(ctx, filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(r), WithCache(store), WithMetrics(metrics),
		WithBackgroundFetch(true, 0), WithBackgroundRetry(time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "background fetch retried during the outage", func() bool {
		return testutil.ToFloat64(metrics.backgroundRetries) >= 3
	})
	st := onlyLayer(t, sn)
	if st.Retries < 3 || !strings.Contains(st.LastError, errRegistryDown.Error()) || (st.Background != "incomplete" && st.Background != "running") {
		t.Fatalf("status during the outage: %+v, want incomplete or running, retries and the last error", st)
	}

	down.Store(false)
	waitUntil(t, 30*time.Second, "layer verified after the registry came back", func() bool {
		return testutil.ToFloat64(metrics.verifications.WithLabelValues("ok")) == 1
	})
	st = onlyLayer(t, sn)
	if st.Background != "verified" || st.Retries < 3 || st.LastError != "" || st.LocalBytes != st.Bytes {
		t.Fatalf("status after the outage: %+v, want verified, the retries counted, no error, every byte local", st)
	}
	if st.Image != "127.0.0.1:5000/app:v1" || st.Reason != "estargz" {
		t.Fatalf("status names image %q, reason %q", st.Image, st.Reason)
	}
}

// `rill status` after a restart still says why a layer streams and which image it belongs
// to, and never shows more of a layer local than it has (the cache's block rounding and the
// tar headers kept for verification are not the layer's bytes).
func TestStatusAfterRestart(t *testing.T) {
	requireRoot(t)
	entries := []testlayer.Entry{testlayer.Reg("big", testlayer.RandomBytes(3, 200<<10), 0o644)}
	for _, name := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"} {
		entries = append(entries, testlayer.Reg(name, []byte(name+"\n"), 0o644))
	}
	local, digests := newLocalResolver(t, entries)
	r := &outageResolver{originalResolver: &originalResolver{localResolver: local}, down: &atomic.Bool{}}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	store, err := cache.Open(ctx, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics), WithBackgroundFetch(true, 0))
	if err != nil {
		t.Fatal(err)
	}
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "layer verified", func() bool {
		return testutil.ToFloat64(metrics.verifications.WithLabelValues("ok")) == 1
	})
	check := func(when string) {
		st := onlyLayer(t, sn)
		if st.Reason != "estargz" || st.Image != "127.0.0.1:5000/app:v1" || strings.Contains(st.Image, "@sha256:") {
			t.Errorf("%s: reason %q, image %q", when, st.Reason, st.Image)
		}
		if st.LocalBytes != st.Bytes || st.CacheBytes < st.Bytes {
			t.Errorf("%s: %d of %d bytes local (%d in the cache), want all of them", when, st.LocalBytes, st.Bytes, st.CacheBytes)
		}
	}
	check("before the restart")
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if store, err = cache.Open(ctx, cacheDir); err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if sn, err = NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics)); err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	check("after the restart")
}

// criLabels are the labels CRI passes when it unpacks layer i of img pulled as ref.
func criLabels(ref string, img *testImage, i int) snapshots.Opt {
	var layers []string
	for _, l := range img.manifest.Layers[i:] {
		layers = append(layers, l.Digest.String())
	}
	return snapshots.WithLabels(map[string]string{
		"containerd.io/snapshot.ref":                 fmt.Sprintf("chain-%d", i),
		"containerd.io/snapshot/cri.image-ref":       ref,
		"containerd.io/snapshot/cri.layer-digest":    img.manifest.Layers[i].Digest.String(),
		"containerd.io/snapshot/cri.manifest-digest": img.manifestDesc.Digest.String(),
		"containerd.io/snapshot/cri.image-layers":    strings.Join(layers, ","),
	})
}

// A registry that accepts range requests and never answers costs a pull one prepare timeout,
// not one per layer: the first layer falls back when the timeout ends, its host is marked
// unhealthy, and the other layers of the pull (and of later pulls) fall back at once, without
// a request to it. An answer from the host clears it.
func TestHungRegistryBoundsPrepare(t *testing.T) {
	requireRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	r := newTestRegistry(t)
	img := r.pushImage(t, "esgz", ocispec.Platform{OS: "linux", Architecture: "amd64"}, true)
	r.pushJSON(t, "esgz:v1", ocispec.MediaTypeImageManifest, img.manifest)
	ref := r.host + "/esgz:v1"
	res, err := NewRegistryResolver(ctx, r.reg, []string{"linux/amd64"}, TrustBound)
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(res), WithMetrics(metrics), WithPrepareTimeout(300*time.Millisecond, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	r.hangRanges.Store(true)

	// The first layer: a full pull once the prepare timeout is over (not the 2 min before).
	prepared := make(chan error, 1)
	go func() {
		mounts, err := sn.Prepare(ctx, "extract-0", "", criLabels(ref, img, 0))
		if err == nil && len(mounts) == 0 {
			err = errors.New("no mounts")
		}
		prepared <- err
	}()
	select {
	case err := <-prepared:
		if err != nil {
			t.Fatalf("Prepare of a layer of a hung registry: %v, want the mounts of a full pull", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Prepare of a layer of a hung registry is not bounded by the prepare timeout")
	}
	if r.hung.Load() == 0 {
		t.Fatal("the test registry hung no request")
	}
	hosts := sn.Hosts()
	if len(hosts) != 1 || hosts[0].Host != r.host || !strings.Contains(hosts[0].LastError, "prepare timeout") {
		t.Fatalf("unhealthy hosts: %+v, want %s with the timeout", hosts, r.host)
	}
	if got := testutil.ToFloat64(metrics.unhealthyHosts.WithLabelValues(r.host)); got != 1 {
		t.Fatalf("rill_registry_host_unhealthy = %v", got)
	}

	// The second layer, and the first again (a new pull): at once, without a request.
	requests := r.count("")
	for i, key := range []string{"extract-1", "extract-again"} {
		mounts, err := sn.Prepare(ctx, key, "", criLabels(ref, img, 1-i))
		if err != nil || len(mounts) == 0 {
			t.Fatalf("Prepare %s of an unhealthy host: %v, want a full pull", key, err)
		}
	}
	if n := r.count("") - requests; n != 0 {
		t.Fatalf("%d requests to an unhealthy host after it failed a Prepare, want none", n)
	}
	if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("fallback", "host-unhealthy")); got < 1 {
		t.Fatalf("fallbacks counted with reason host-unhealthy: %v", got)
	}

	// The host answers again: once its unhealthy period is over, the next Prepare asks it,
	// streams, and clears it.
	r.hangRanges.Store(false)
	sn.health.mu.Lock()
	sn.health.hosts[r.host].Until = time.Now()
	sn.health.mu.Unlock()
	if _, err := sn.Prepare(ctx, "extract-healthy", "", criLabels(ref, img, 0)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare once the host answers: %v, want the layer streamed", err)
	}
	if hosts := sn.Hosts(); len(hosts) != 0 {
		t.Fatalf("unhealthy hosts after a healthy answer: %+v", hosts)
	}
	if got := testutil.ToFloat64(metrics.unhealthyHosts.WithLabelValues(r.host)); got != 0 {
		t.Fatalf("rill_registry_host_unhealthy after a healthy answer = %v", got)
	}
}

// openFailResolver is a localResolver whose blobs cannot be opened while fail is set.
type openFailResolver struct {
	*localResolver
	fail atomic.Bool
}

func (r *openFailResolver) OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor) (Blob, error) {
	if r.fail.Load() {
		return nil, errRegistryDown
	}
	return r.localResolver.OpenBlob(ctx, ref, desc)
}

// captureLogs records what the daemon logs (the standard logger) during the test.
func captureLogs(t *testing.T) *logtest.Hook {
	t.Helper()
	logger := logrus.StandardLogger()
	old := logger.ReplaceHooks(logrus.LevelHooks{})
	hook := logtest.NewLocal(logger)
	t.Cleanup(func() { logger.ReplaceHooks(old) })
	return hook
}

// A streamed layer whose toc.json was damaged on disk is recovered once the registry answers:
// its TOC (whose digest the layer record keeps) is fetched again, and the layer is served,
// instead of answering EIO until its image is pulled again. A layer removed while it could not
// be restored is removed without an error about its (unknown) blob.
func TestDamagedTOCIsFetchedAgain(t *testing.T) {
	requireRoot(t)
	logs := captureLogs(t)
	local, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("etc/app.conf", []byte("setting = 1\n"), 0o644)})
	r := &openFailResolver{localResolver: local}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	open := func(root string) (*Snapshotter, *cache.Store, *Metrics) {
		store, err := cache.Open(ctx, cacheDir)
		if err != nil {
			t.Fatal(err)
		}
		metrics := NewMetrics()
		sn, err := NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics), WithBackgroundRetry(time.Millisecond, 20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		return sn, store, metrics
	}
	root := t.TempDir()
	sn, store, _ := open(root)
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	id := onlyLayer(t, sn).Snapshot
	sn.Close()
	store.Close()
	tocPath := filepath.Join(root, "snapshots", id, tocFile)
	if err := os.WriteFile(tocPath, []byte(`{"version":1,"entries":[{"name":"etc/","type":"dir"`), 0o600); err != nil {
		t.Fatal(err)
	}

	// The registry does not answer at start: the layer is unavailable, then recovered.
	r.fail.Store(true)
	sn, store, metrics := open(root)
	defer func() { sn.Close(); store.Close() }() // the last ones opened
	if got := testutil.ToFloat64(metrics.restores.WithLabelValues("degraded")); got != 1 {
		t.Fatalf("degraded restores: %v", got)
	}
	if !onlyLayer(t, sn).Unavailable {
		t.Fatal("a layer with a damaged TOC is not shown unavailable while the registry does not answer")
	}
	r.fail.Store(false)
	waitUntil(t, 30*time.Second, "layer recovered", func() bool {
		return testutil.ToFloat64(metrics.restores.WithLabelValues("recovered")) == 1
	})
	view, release := mountView(t, ctx, sn, "view", "chain")
	if got, err := os.ReadFile(filepath.Join(view, "etc/app.conf")); err != nil || string(got) != "setting = 1\n" {
		t.Fatalf("read from the recovered layer: %q, %v", got, err)
	}
	release()
	if data, err := os.ReadFile(tocPath); err != nil || digest.FromBytes(data) != local.layers[d].conv.TOCDigest {
		t.Errorf("the TOC fetched again was not written back: %v", err)
	}

	// Damaged again with the registry gone for good: removing the layer says nothing wrong.
	sn.Close()
	store.Close()
	if err := os.WriteFile(tocPath, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.fail.Store(true)
	sn, store, _ = open(root)
	logs.Reset()
	if err := sn.Remove(ctx, "chain"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, e := range logs.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("removing a layer that was never restored logged %s: %s %v", e.Level, e.Message, e.Data)
		}
	}
}

// Stopping the daemon while a container uses a streamed layer says what happens: nothing
// serves the layer once the process exits (not "served until its last user lets go").
func TestStopWithContainersRunningSaysWhatHappens(t *testing.T) {
	requireRoot(t)
	local, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("bin/app", []byte("app\n"), 0o755)})
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(local))
	if err != nil {
		t.Fatal(err)
	}
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	mounts, err := sn.View(ctx, "container", "chain")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil { // a running container's root
		t.Fatal(err)
	}
	defer mount.UnmountAll(dir, unix.MNT_DETACH)
	logs := captureLogs(t)
	sn.Close()
	var said []string
	for _, e := range logs.AllEntries() {
		said = append(said, fmt.Sprint(e.Message, " ", e.Data))
	}
	all := strings.Join(said, "\n")
	if !strings.Contains(all, "rill-snapshotter is stopping") || !strings.Contains(all, "restart those containers") {
		t.Errorf("stopping with a container running does not say that it loses its streamed files:\n%s", all)
	}
	if strings.Contains(all, "served until its last user lets go") {
		t.Errorf("stopping says the layer is served on:\n%s", all)
	}
}

// gatedResolver is a localResolver that cannot open blobs while fail is set and whose
// blob opening number gate (counted once fail is cleared) waits until release is closed or its
// context ends: the moment a layer being recovered was taken down and is about to be mounted again.
type gatedResolver struct {
	*localResolver
	fail     atomic.Bool
	opened   atomic.Int32
	gate     int32
	entered  chan struct{} // closed when the gated call starts
	release  chan struct{}
	returned chan error // the gated call's outcome
}

func (r *gatedResolver) OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor) (Blob, error) {
	if r.fail.Load() {
		return nil, errRegistryDown
	}
	if r.opened.Add(1) != r.gate {
		return r.localResolver.OpenBlob(ctx, ref, desc)
	}
	close(r.entered)
	var err error
	select {
	case <-r.release:
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.returned <- err
	if err != nil {
		return nil, err
	}
	return r.localResolver.OpenBlob(ctx, ref, desc)
}

// Stopping the daemon while a layer with a damaged TOC is being recovered leaves nothing
// mounted: a recovery that had already taken the layer's unavailable form down does not
// mount the layer again after Close unmounted everything, and Close returns only once the
// recovery has stopped.
func TestCloseDuringRecoveryLeavesNothingMounted(t *testing.T) {
	requireRoot(t)
	local, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("etc/app.conf", []byte("setting = 1\n"), 0o644)})
	// Once the registry answers, the recovery opens the blob twice: to fetch the TOC again,
	// then (the unavailable form taken down) to mount the layer. The second open waits.
	r := &gatedResolver{localResolver: local, gate: 2, entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan error, 1)}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	t.Cleanup(func() { // whatever the outcome, nothing stays mounted below the test's root
		for _, m := range mountsUnder(t, root) {
			unix.Unmount(m, unix.MNT_DETACH)
		}
	})
	open := func() (*Snapshotter, *Metrics) {
		metrics := NewMetrics()
		sn, err := NewSnapshotter(ctx, root, WithResolver(r), WithMetrics(metrics), WithBackgroundRetry(time.Millisecond, 20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		return sn, metrics
	}
	r.fail.Store(true) // no open is counted until the recovery
	sn, _ := open()
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	id := onlyLayer(t, sn).Snapshot
	sn.Close()
	if err := os.WriteFile(filepath.Join(root, "snapshots", id, tocFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	sn, metrics := open()
	if !onlyLayer(t, sn).Unavailable {
		t.Fatal("a layer with a damaged TOC is not shown unavailable while the registry does not answer")
	}
	r.fail.Store(false)
	select {
	case <-r.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the layer's recovery did not start within 30s")
	}
	sn.Close()
	close(r.release)
	if err := <-r.returned; err == nil {
		// The recovery went on after Close: let it finish, to see what it leaves.
		waitUntil(t, 30*time.Second, "the recovery to end", func() bool {
			return testutil.ToFloat64(metrics.restores.WithLabelValues("recovered")) == 1
		})
	}
	if left := mountsUnder(t, root); len(left) != 0 {
		t.Errorf("mounted after Close: %v", left)
	}
}
