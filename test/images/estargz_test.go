package images

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/fstree"
	"github.com/rillstream/rill/test/harness"
)

// The Debian image converted to eStargz and mounted through rill is, path by path, what
// containerd extracts from the original layer: content, type, mode, owner, size, mtime, xattrs,
// link targets, hardlink groups.
func TestEStargzDebianMountsLikeContainerdExtracts(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	deb, err := Debian(ctx, DefaultCacheDir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	esgz, err := EStargz(ctx, deb, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	compareLayers(t, deb, esgz, 1000)
}

// The fixture image — every kind of entry, whiteouts and opaque directories across layers,
// xattrs, hardlinks, a file of 100 MiB and files mostly of zeros, 255-byte and unicode names,
// layers that omit parent directories — with a layer of device nodes and of directories
// implied over lower ones stacked on it, converted to eStargz and mounted through rill layer
// by layer, is what containerd extracts from the original layers: each layer as containerd
// extracts it onto its parents for overlayfs, and the stacked layers as overlayfs shows them.
//
// The eStargz TOC keeps modification times in whole seconds (RFC 3339 without fractions; the
// estargz writer rounds), so a streamed layer cannot carry sub-second mtimes: the fixture's
// are whole seconds, and mtimes are compared to the nanosecond.
func TestEStargzFixtureMountsLikeContainerdExtracts(t *testing.T) {
	requireRoot(t)
	ctx := t.Context()
	repoRoot, err := harness.RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img, err := Fixture(ctx, repoRoot, dir, FixtureOptions{BigFileSize: 100 << 20})
	if err != nil {
		t.Fatal(err)
	}
	extra, err := EquivalenceLayer(filepath.Join(dir, "layer-equivalence.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	img.Spec.Layers = append(img.Spec.Layers, extra)
	esgz, err := EStargz(ctx, img, dir)
	if err != nil {
		t.Fatal(err)
	}
	compareLayers(t, img, esgz, 40)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts FUSE and overlayfs and must run as root")
	}
}

// compareLayers extracts orig's layers with containerd and mounts esgz's through rill, each
// onto the ones below it as the snapshotters do, and compares them layer by layer and, for
// more than one layer, stacked under overlayfs. The image must have at least minPaths paths.
func compareLayers(t *testing.T, orig, esgz *TestImage, minPaths int) {
	t.Helper()
	var extracted, mounted []string // topmost first, as overlayfs's lowerdir lists them
	allImplied := map[string]bool{}
	for i, l := range esgz.Spec.Layers {
		implied := impliedDirs(t, orig.Spec.Layers[i])
		maps.Copy(allImplied, implied)
		want := extract(t, orig.Spec.Layers[i], extracted)
		got := mountEStargz(t, l, mounted)
		extracted = append([]string{want}, extracted...)
		mounted = append([]string{got}, mounted...)
		least := 1
		if len(esgz.Spec.Layers) == 1 {
			least = minPaths
		}
		compareTrees(t, fmt.Sprintf("layer %d", i), want, got, implied, least)
	}
	if len(extracted) < 2 {
		return
	}
	compareTrees(t, "the stacked layers", overlay(t, extracted), overlay(t, mounted), allImplied, minPaths)
}

// compareTrees fails the test unless the trees at want and got are described alike, mtimes
// of the directories in noMtime aside (extraction creates directories a layer only implies
// at the time it runs).
func compareTrees(t *testing.T, what, want, got string, noMtime map[string]bool, minPaths int) {
	t.Helper()
	wantTree, err := fstree.Describe(want, noMtime)
	if err != nil {
		t.Fatal(err)
	}
	gotTree, err := fstree.Describe(got, noMtime)
	if err != nil {
		t.Fatal(err)
	}
	if len(wantTree) < minPaths {
		t.Fatalf("%s has only %d paths", what, len(wantTree))
	}
	diffs := fstree.Diff(wantTree, gotTree)
	for _, d := range diffs[:min(len(diffs), 20)] {
		t.Error(d)
	}
	if len(diffs) > 0 {
		t.Fatalf("%s: %d of %d paths differ", what, len(diffs), len(wantTree))
	}
	t.Logf("%s: %d paths identical", what, len(wantTree))
}

func impliedDirs(t *testing.T, l *harness.Layer) map[string]bool {
	t.Helper()
	r, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	implied, err := fstree.ImpliedDirs(r)
	if err != nil {
		t.Fatal(err)
	}
	return implied
}

// extract extracts l as containerd does for its overlayfs snapshotter: the bottom layer
// (no parents) as it is, whiteouts deleting nothing; a layer above, onto its parents
// (topmost first), whiteouts becoming 0/0 character devices and opaque markers an xattr, the
// directories it implies taking their parents' metadata.
func extract(t *testing.T, l *harness.Layer, parents []string) string {
	t.Helper()
	r, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	var opts []archive.ApplyOpt
	if len(parents) > 0 {
		opts = append(opts, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents(parents))
	}
	if _, err := archive.Apply(context.Background(), dir, r, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mountEStargz mounts l through rill onto the layers below it (lowers, topmost first), as the
// snapshotter does.
func mountEStargz(t *testing.T, l *harness.Layer, lowers []string) string {
	t.Helper()
	ctx := context.Background()
	f, err := os.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	toc, err := rillfs.LoadTOC(ctx, f, l.Size, digestOf(t, l.Annotations["containerd.io/snapshot/stargz/toc.digest"]), rillfs.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := rillfs.NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	if len(lowers) == 0 {
		idx.DropWhiteouts()
	} else if err := idx.InheritImplied(lowers); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := rillfs.Mount(ctx, mnt, idx, f, rillfs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(context.Background()); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return mnt
}

// overlay mounts lowers (topmost first) read-only with overlayfs, as a container's root file
// system stacks its image's layers.
func overlay(t *testing.T, lowers []string) string {
	t.Helper()
	if slices.ContainsFunc(lowers, func(l string) bool { return strings.ContainsAny(l, ":,") }) {
		t.Fatalf("lower directories %q cannot be named in overlayfs options", lowers)
	}
	mnt := t.TempDir()
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatalf("mount overlayfs over %d layers: %v", len(lowers), err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount overlayfs: %v", err)
		}
	})
	return mnt
}

func digestOf(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatalf("TOC digest annotation %q: %v", s, err)
	}
	return d
}
