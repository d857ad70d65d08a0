package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/convert"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/testlayer"
	bolt "go.etcd.io/bbolt"
)

// localBlob is a layer blob held in memory.
type localBlob struct{ *bytes.Reader }

func (b localBlob) Size() int64 { return b.Reader.Size() }

// localResolver streams the layers it has converted, and refuses the rest.
type localResolver struct {
	layers map[digest.Digest]localLayer // by original layer digest
	// badTOC makes it announce a wrong TOC digest.
	badTOC bool
}

type localLayer struct {
	tar  []byte
	blob []byte
	conv convert.Layer
}

func (r *localResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	layer, ok := r.layers[l.Layer]
	if !ok {
		return RemoteLayer{}, NotStreamable("no-artifact")
	}
	toc := layer.conv.TOCDigest
	if r.badTOC {
		toc = digest.FromString("not the TOC")
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: layer.conv.Digest, Size: layer.conv.Size}
	return RemoteLayer{Ref: l.ImageRef, Desc: desc, TOCDigest: toc, Reason: "estargz", Blob: localBlob{bytes.NewReader(layer.blob)}}, nil
}

func (r *localResolver) OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor) (Blob, error) {
	for _, l := range r.layers {
		if l.conv.Digest == desc.Digest {
			return localBlob{bytes.NewReader(l.blob)}, nil
		}
	}
	return nil, errdefs.ErrNotFound
}

func newLocalResolver(t *testing.T, layers ...[]testlayer.Entry) (*localResolver, []digest.Digest) {
	t.Helper()
	r := &localResolver{layers: map[digest.Digest]localLayer{}}
	var digests []digest.Digest
	for _, entries := range layers {
		tarBytes, err := testlayer.Tar(entries, 0)
		if err != nil {
			t.Fatal(err)
		}
		gz := testlayer.Gzip(tarBytes)
		var blob bytes.Buffer
		conv, err := convert.ConvertLayer(context.Background(), bytes.NewReader(gz), &blob, convert.LayerOptions{ChunkSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		d := digest.FromBytes(gz)
		r.layers[d] = localLayer{tar: tarBytes, blob: blob.Bytes(), conv: conv}
		digests = append(digests, d)
	}
	return r, digests
}

func unpackLabels(target string, layer digest.Digest, toc digest.Digest) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		"containerd.io/snapshot.ref":                 target,
		"containerd.io/snapshot/cri.image-ref":       "127.0.0.1:5000/app:v1",
		"containerd.io/snapshot/cri.layer-digest":    layer.String(),
		"containerd.io/snapshot/cri.manifest-digest": digest.FromString("manifest").String(),
		"containerd.io/snapshot/stargz/toc.digest":   toc.String(),
	})
}

// mountView mounts a read-only view of parent; release unmounts and removes it.
func mountView(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, key, parent string) (dir string, release func()) {
	t.Helper()
	mounts, err := sn.View(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Errorf("unmount view: %v", err)
		}
		if err := sn.Remove(ctx, key); err != nil {
			t.Errorf("remove view: %v", err)
		}
	}
	t.Cleanup(release)
	return dir, release
}

func extract(t *testing.T, tars ...[]byte) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range tars {
		if _, err := archive.Apply(context.Background(), dir, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}

// Layers that stream are mounted and committed under their target from Prepare, which answers
// AlreadyExists; an image of two streamed layers then reads exactly like the extracted layers,
// also after a restart; removing the snapshots unmounts and deletes them.
func TestStreamedLayersLifecycle(t *testing.T) {
	requireRoot(t)
	lower := testlayer.EveryKind()
	upper := []testlayer.Entry{
		testlayer.Reg("etc/hostname", []byte("replaced above\n"), 0o644),
		testlayer.Reg("etc/.wh.empty", nil, 0o600),
		testlayer.Dir("opaque/", 0o755),
		testlayer.Reg("opaque/.wh..wh..opq", nil, 0o600),
		testlayer.Reg("opaque/new", []byte("new\n"), 0o644),
		// tmp/ (1777) and srv/shared/ (set-group-ID) are only implied here: they keep the
		// metadata of the layer below, as containerd's extraction keeps it.
		testlayer.Reg("tmp/from-above", []byte("above\n"), 0o644),
		testlayer.Reg("srv/shared/from-above", []byte("above\n"), 0o644),
	}
	resolver, digests := newLocalResolver(t, lower, upper)
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	metrics := NewMetrics()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	store, err := cache.Open(ctx, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	obs := &layerEvents{}
	sn, err := NewSnapshotter(ctx, root, WithResolver(resolver), WithMetrics(metrics), WithCache(store), WithLayerObserver(obs),
		WithFSOptions(rillfs.Limits{}, rillfs.MountOptions{Debug: os.Getenv("RILL_FUSE_DEBUG") != ""}))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			sn.Close()
		}
	})

	for i, d := range digests {
		parent := ""
		if i > 0 {
			parent = "chain-0"
		}
		target := []string{"chain-0", "chain-1"}[i]
		_, err := sn.Prepare(ctx, "extract-"+target, parent, unpackLabels(target, d, resolver.layers[d].conv.TOCDigest))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("Prepare of a streamable layer: %v, want AlreadyExists", err)
		}
		info, err := sn.Stat(ctx, target)
		if err != nil || info.Kind != snapshots.KindCommitted || info.Parent != parent {
			t.Fatalf("target %s after streaming: %+v, %v", target, info, err)
		}
		if _, err := sn.Stat(ctx, "extract-"+target); !errdefs.IsNotFound(err) {
			t.Fatalf("the active snapshot of a streamed layer remains: %v", err)
		}
	}
	if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("stream", "estargz")); got != 2 {
		t.Fatalf("stream decisions counted: %v", got)
	}
	obs.expect(t, "after the pull", 2, 0)

	want := extract(t, resolver.layers[digests[0]].tar, resolver.layers[digests[1]].tar)
	view, release := mountView(t, ctx, sn, "view-1", "chain-1")
	compareDirs(t, want, view)
	release()
	if store.Usage() == 0 {
		t.Fatal("reading the streamed image stored nothing in the cache")
	}

	// Restart: the layers come back from disk.
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if m := mountsUnder(t, root); len(m) != 0 {
		t.Fatalf("mounts left after Close: %v", m)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if store, err = cache.Open(ctx, cacheDir); err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	obs = &layerEvents{}
	sn, err = NewSnapshotter(ctx, root, WithResolver(resolver), WithMetrics(metrics), WithCache(store), WithLayerObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	closed = false
	obs.expect(t, "after the restart", 2, 0)
	if got := testutil.ToFloat64(metrics.restores.WithLabelValues("ok")); got != 2 {
		t.Fatalf("restored layers: %v", got)
	}
	view, release = mountView(t, ctx, sn, "view-2", "chain-1")
	compareDirs(t, want, view)
	release()

	// Removal: unmounted and deleted.
	for _, key := range []string{"chain-1", "chain-0"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, filepath.Join(root, "snapshots")); len(m) != 0 {
		t.Fatalf("mounts left after removing the streamed layers: %v", m)
	}
	obs.expect(t, "after the removal", 2, 2)
	if u := store.Usage(); u != 0 {
		t.Fatalf("the cache still holds %d bytes of removed layers", u)
	}
}

// Every failure on the streaming path gives containerd an ordinary snapshot to pull into.
func TestStreamingFailsOpen(t *testing.T) {
	requireRoot(t)
	resolver, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("a", []byte("a\n"), 0o644)})
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	cases := []struct {
		name   string
		setup  func()
		layer  digest.Digest
		reason string
	}{
		{"no artifact for the layer", func() {}, digest.FromString("other layer"), "no-artifact"},
		{"TOC does not match the image's digest", func() { resolver.badTOC = true }, digests[0], "toc-invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.setup()
			metrics := NewMetrics()
			sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(resolver), WithMetrics(metrics))
			if err != nil {
				t.Fatal(err)
			}
			defer sn.Close()
			mounts, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", c.layer, resolver.layers[digests[0]].conv.TOCDigest))
			if err != nil || len(mounts) == 0 {
				t.Fatalf("Prepare: %v, %v; want ordinary mounts", mounts, err)
			}
			if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("fallback", c.reason)); got != 1 {
				t.Fatalf("fallback %q counted %v times", c.reason, got)
			}
			// containerd pulls into it and commits.
			if err := sn.Commit(ctx, "chain", "extract"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func compareDirs(t *testing.T, want, got string) {
	t.Helper()
	describe := func(root string) map[string]string {
		out := map[string]string{}
		walkErr := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			d := fi.Mode().String()
			if fi.Mode().IsRegular() {
				b, err := os.ReadFile(p)
				if err != nil {
					d += " read error " + err.Error()
				} else {
					d += " " + digest.FromBytes(b).String()
				}
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(p)
				d += " -> " + target
			}
			out[rel] = d
			return nil
		})
		if walkErr != nil {
			t.Fatalf("walk %s: %v", root, walkErr)
		}
		return out
	}
	w, g := describe(want), describe(got)
	var diffs []string
	for p, d := range w {
		if g[p] != d {
			diffs = append(diffs, p+": want "+d+", got "+g[p])
		}
	}
	for p, d := range g {
		if _, ok := w[p]; !ok {
			diffs = append(diffs, p+": unexpected "+d)
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("the streamed image differs from the extracted layers:\n%s", strings.Join(diffs, "\n"))
	}
	if len(w) < 5 {
		t.Fatalf("compared only %d paths", len(w))
	}
}

// countingResolver counts Resolve calls per layer.
type countingResolver struct {
	*localResolver
	mu    sync.Mutex
	calls map[digest.Digest]int
}

func (c *countingResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	c.mu.Lock()
	c.calls[l.Layer]++
	c.mu.Unlock()
	return c.localResolver.Resolve(ctx, l)
}

// Preparing the first layer of an image resolves all its layers and loads their TOCs at once;
// the later Prepares find them loaded and resolve nothing again.
func TestLayersOfAnImageResolveTogether(t *testing.T) {
	requireRoot(t)
	local, digests := newLocalResolver(t,
		[]testlayer.Entry{testlayer.Reg("a", []byte("a\n"), 0o644)},
		[]testlayer.Entry{testlayer.Reg("b", []byte("b\n"), 0o644)},
		[]testlayer.Entry{testlayer.Reg("c", []byte("c\n"), 0o644)})
	r := &countingResolver{localResolver: local, calls: map[digest.Digest]int{}}
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(r))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	parent := ""
	for i, d := range digests {
		labels := map[string]string{
			"containerd.io/snapshot.ref":               fmt.Sprintf("chain-%d", i),
			"containerd.io/snapshot/cri.image-ref":     "127.0.0.1:5000/app:v1",
			"containerd.io/snapshot/cri.layer-digest":  d.String(),
			"containerd.io/snapshot/cri.image-layers":  layerList(digests[i:]),
			"containerd.io/snapshot/stargz/toc.digest": local.layers[d].conv.TOCDigest.String(),
		}
		if _, err := sn.Prepare(ctx, fmt.Sprintf("extract-%d", i), parent, snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("layer %d: %v", i, err)
		}
		if i == 0 {
			// All three are resolved once the first is prepared (the others in the background).
			deadline := time.Now().Add(10 * time.Second)
			for {
				r.mu.Lock()
				n := len(r.calls)
				r.mu.Unlock()
				if n == 3 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		parent = fmt.Sprintf("chain-%d", i)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, d := range digests {
		if r.calls[d] != 1 {
			t.Errorf("layer %d resolved %d times, want once", i, r.calls[d])
		}
	}
}

func layerList(ds []digest.Digest) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.String())
	}
	return strings.Join(s, ",")
}

// A streamed layer whose state on disk is lost does not keep the daemon from starting; it is
// mounted as unavailable: reads fail with EIO instead of showing an empty layer.
func TestUnrestorableLayerIsDegraded(t *testing.T) {
	requireRoot(t)
	resolver, digests := newLocalResolver(t, []testlayer.Entry{testlayer.Reg("data/file", []byte("x\n"), 0o644)})
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	sn, err := NewSnapshotter(ctx, root, WithResolver(resolver))
	if err != nil {
		t.Fatal(err)
	}
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, resolver.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	tocs, _ := filepath.Glob(filepath.Join(root, "snapshots", "*", tocFile))
	if len(tocs) != 1 {
		t.Fatalf("want one stored TOC, found %v", tocs)
	}
	if err := os.Remove(tocs[0]); err != nil {
		t.Fatal(err)
	}

	metrics := NewMetrics()
	unreachable := &openFailResolver{localResolver: resolver} // else the TOC is fetched again
	unreachable.fail.Store(true)
	sn, err = NewSnapshotter(ctx, root, WithResolver(unreachable), WithMetrics(metrics))
	if err != nil {
		t.Fatalf("a lost layer kept the snapshotter from starting: %v", err)
	}
	defer sn.Close()
	if got := testutil.ToFloat64(metrics.restores.WithLabelValues("degraded")); got != 1 {
		t.Fatalf("degraded restores counted: %v", got)
	}
	view, release := mountView(t, ctx, sn, "view", "chain")
	defer release()
	if _, err := os.ReadDir(view); !errors.Is(err, syscall.EIO) {
		t.Fatalf("listing a degraded layer: %v, want EIO", err)
	}
	// The snapshot can still be removed, and its mount goes with it.
	release()
	if err := sn.Remove(ctx, "chain"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, root); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

// originalResolver is a localResolver that names each layer's original, or a wrong one.
type originalResolver struct {
	*localResolver
	wrong bool
}

func (r *originalResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	rl, err := r.localResolver.Resolve(ctx, l)
	if err != nil {
		return rl, err
	}
	conv := r.layers[l.Layer].conv
	rl.Original = &rillfs.Original{DiffID: conv.OriginalDiffID, Size: conv.OriginalSize}
	if r.wrong {
		rl.Original.DiffID = digest.FromString("another layer")
	}
	return rl, nil
}

// Streamed layers become complete in the background and are checked against the original; a
// layer that does not match raises the alarm and is never streamed again.
func TestBackgroundVerification(t *testing.T) {
	requireRoot(t)
	for _, wrong := range []bool{false, true} {
		local, digests := newLocalResolver(t, append(testlayer.EveryKind(), testlayer.Reg("more", testlayer.RandomBytes(5, 100<<10), 0o644)))
		r := &originalResolver{localResolver: local, wrong: wrong}
		ctx := namespaces.WithNamespace(context.Background(), "rill-test")
		root := t.TempDir()
		store, err := cache.Open(ctx, filepath.Join(t.TempDir(), "cache"))
		if err != nil {
			t.Fatal(err)
		}
		metrics := NewMetrics()
		sn, err := NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithBackgroundFetch(true, 0), WithMetrics(metrics))
		if err != nil {
			t.Fatal(err)
		}
		d := digests[0]
		if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		want := "ok"
		if wrong {
			want = "mismatch"
		}
		deadline := time.Now().Add(30 * time.Second)
		for testutil.ToFloat64(metrics.verifications.WithLabelValues(want)) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("wrong=%v: no %s verification within 30s", wrong, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if wrong {
			// The same blob is not streamed again, even after a restart.
			sn.Close()
			sn, err = NewSnapshotter(ctx, root, WithResolver(r), WithCache(store), WithMetrics(metrics))
			if err != nil {
				t.Fatal(err)
			}
			mounts, err := sn.Prepare(ctx, "extract-again", "", unpackLabels("chain-again", d, local.layers[d].conv.TOCDigest))
			if err != nil || len(mounts) == 0 {
				t.Fatalf("a layer that failed verification: %v, want a full pull", err)
			}
			if testutil.ToFloat64(metrics.decisions.WithLabelValues("fallback", "verification-failed")) != 1 {
				t.Fatal("the fallback of a failed layer is not counted with its reason")
			}
		}
		sn.Close()
		store.Close()
	}
}

// The files an image opens after its layers are mounted are written, in first-access order,
// as its prefetch profile.
func TestAccessRecordingWritesAProfile(t *testing.T) {
	requireRoot(t)
	ctx, sn, root := recordingSnapshotter(t, 500*time.Millisecond)
	view, release := mountView(t, ctx, sn, "view", "chain")
	defer release()
	for _, p := range []string{"etc/app.conf", "bin/app", "etc/app.conf"} {
		if _, err := os.ReadFile(filepath.Join(view, p)); err != nil {
			t.Fatal(err)
		}
	}
	path := ProfilePath(root, "127.0.0.1:5000/app:v1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			var p artifact.ProfileFile
			if err := json.Unmarshal(data, &p); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(p.Paths) != "[/etc/app.conf /bin/app]" || p.Image != "127.0.0.1:5000/app:v1" {
				t.Fatalf("profile %+v", p)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no profile at %s: %v", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A daemon that stops before the recording window is over writes what it recorded so far.
func TestClosingWritesThePendingProfile(t *testing.T) {
	requireRoot(t)
	ctx, sn, root := recordingSnapshotter(t, time.Hour)
	view, release := mountView(t, ctx, sn, "view", "chain")
	if _, err := os.ReadFile(filepath.Join(view, "bin/app")); err != nil {
		t.Fatal(err)
	}
	release()
	path := ProfilePath(root, "127.0.0.1:5000/app:v1")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a profile exists before the window is over: %v", err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("closing the snapshotter did not write the pending profile: %v", err)
	}
	var p artifact.ProfileFile
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.Paths) != "[/bin/app]" {
		t.Fatalf("profile written at close: %+v", p)
	}
}

// recordingSnapshotter is a snapshotter recording with window, with a streamed layer of three
// files committed as "chain"; it is closed at the end of the test.
func recordingSnapshotter(t *testing.T, window time.Duration) (context.Context, *Snapshotter, string) {
	t.Helper()
	local, digests := newLocalResolver(t, []testlayer.Entry{
		testlayer.Reg("bin/app", []byte("app"), 0o755),
		testlayer.Reg("etc/app.conf", []byte("conf"), 0o644),
		testlayer.Reg("unused", []byte("unused"), 0o644),
	})
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	sn, err := NewSnapshotter(ctx, root, WithResolver(local), WithRecordWindow(window))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return ctx, sn, root
}

// A second containerd namespace pulling an image that the first streamed shares its streamed
// layers (through containerd's own metadata, which keys snapshots per namespace and targets per
// chain ID): its Prepares answer AlreadyExists too, nothing is pulled in full, and it reads the
// same files. Removing the image from one namespace leaves it working in the other.
func TestSecondNamespaceSharesStreamedLayers(t *testing.T) {
	requireRoot(t)
	lower := []testlayer.Entry{testlayer.Dir("etc/", 0o755), testlayer.Reg("etc/os-release", []byte("ID=rill\n"), 0o644)}
	upper := []testlayer.Entry{testlayer.Dir("app/", 0o755), testlayer.Reg("app/run", []byte("#!/bin/sh\necho hi\n"), 0o755),
		testlayer.Reg("app/data", bytes.Repeat([]byte("data"), 50000), 0o644)}
	resolver, digests := newLocalResolver(t, lower, upper)
	ctx := context.Background()
	metrics := NewMetrics()
	sn, err := NewSnapshotter(ctx, t.TempDir(), WithResolver(resolver), WithMetrics(metrics))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	bdb, err := bolt.Open(filepath.Join(t.TempDir(), "meta.db"), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	db := metadata.NewDB(bdb, nil, map[string]snapshots.Snapshotter{"rill": sn})
	if err := db.Init(ctx); err != nil {
		t.Fatal(err)
	}
	meta := db.Snapshotter("rill")

	// unpack does what containerd's unpacker does for each layer: Prepare with the target,
	// and on AlreadyExists go on with the next layer.
	unpack := func(ns string) {
		t.Helper()
		nctx := namespaces.WithNamespace(ctx, ns)
		parent := ""
		for i, d := range digests {
			target := []string{"sha256:chain-0", "sha256:chain-1"}[i]
			_, err := meta.Prepare(nctx, "extract-"+ns+"-"+target, parent, unpackLabels(target, d, resolver.layers[d].conv.TOCDigest))
			if !errdefs.IsAlreadyExists(err) {
				t.Fatalf("namespace %s: Prepare of streamable layer %d: %v, want AlreadyExists", ns, i, err)
			}
			if info, err := meta.Stat(nctx, target); err != nil || info.Kind != snapshots.KindCommitted {
				t.Fatalf("namespace %s: target %s: %+v, %v", ns, target, info, err)
			}
			parent = target
		}
	}
	unpack("first")
	unpack("second")
	if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("stream", "shared")); got != 2 {
		t.Errorf("layers shared with the second namespace: %v, want 2", got)
	}
	for _, reason := range []string{"commit-error", "internal-error"} {
		if got := testutil.ToFloat64(metrics.decisions.WithLabelValues("fallback", reason)); got != 0 {
			t.Errorf("fallbacks (%s): %v, want none", reason, got)
		}
	}
	// The same target on another parent is not that layer: it is pulled in full, never failed.
	third := namespaces.WithNamespace(ctx, "third")
	if _, err := meta.Prepare(third, "extract-third", "", unpackLabels("sha256:chain-1", digests[1], resolver.layers[digests[1]].conv.TOCDigest)); err != nil {
		t.Fatalf("Prepare of a known target on another parent: %v, want an ordinary snapshot to pull into", err)
	}

	want := extract(t, resolver.layers[digests[0]].tar, resolver.layers[digests[1]].tar)
	read := func(ns string) {
		t.Helper()
		view, release := mountView(t, namespaces.WithNamespace(ctx, ns), meta, "view-"+ns, "sha256:chain-1")
		defer release()
		compareDirs(t, want, view)
	}
	read("first")
	read("second")

	// The first namespace lets go of the image; the second still has it (its image would hold
	// the snapshot for containerd's garbage collector: a gc.root label does it here).
	second := namespaces.WithNamespace(ctx, "second")
	if _, err := meta.Update(second, snapshots.Info{Name: "sha256:chain-1", Labels: map[string]string{"containerd.io/gc.root": "test"}},
		"labels.containerd.io/gc.root"); err != nil {
		t.Fatal(err)
	}
	first := namespaces.WithNamespace(ctx, "first")
	for _, key := range []string{"view-first", "sha256:chain-1", "sha256:chain-0"} {
		if err := meta.Remove(first, key); err != nil && !errdefs.IsNotFound(err) {
			t.Fatalf("remove %s from the first namespace: %v", key, err)
		}
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := meta.Stat(first, "sha256:chain-1"); !errdefs.IsNotFound(err) {
		t.Fatalf("the first namespace still has the image after removing it: %v", err)
	}
	read("second")
}

// layerEvents records what a LayerObserver hears.
type layerEvents struct {
	mu      sync.Mutex
	served  map[string]string // id → ref
	removed map[string]string
}

func (e *layerEvents) LayerServed(_ context.Context, id, ref string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.served == nil {
		e.served = map[string]string{}
	}
	e.served[id] = ref
}

func (e *layerEvents) LayerRemoved(_ context.Context, id, ref string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.removed == nil {
		e.removed = map[string]string{}
	}
	e.removed[id] = ref
}

func (e *layerEvents) expect(t *testing.T, when string, served, removed int) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.served) != served || len(e.removed) != removed {
		t.Fatalf("%s: the observer heard of %d served and %d removed layers, want %d and %d", when, len(e.served), len(e.removed), served, removed)
	}
	for id, ref := range e.served {
		if ref == "" {
			t.Fatalf("%s: layer %s served without its reference", when, id)
		}
		if r, ok := e.removed[id]; ok && r != ref {
			t.Fatalf("%s: layer %s removed with reference %q, served with %q", when, id, r, ref)
		}
	}
}
