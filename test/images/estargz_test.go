package images

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/opencontainers/go-digest"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/fstree"
	"github.com/rillstream/rill/test/harness"
)

// The Debian image converted to eStargz and mounted through rill is, path by path, what
// containerd extracts from the original layer: content, type, mode, owner, size, mtime, xattrs,
// link targets, hardlink groups.
func TestEStargzDebianMountsLikeContainerdExtracts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts FUSE and must run as root")
	}
	ctx := context.Background()
	deb, err := Debian(ctx, DefaultCacheDir, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	esgz, err := EStargz(ctx, deb, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range esgz.Spec.Layers {
		want := extract(t, deb.Spec.Layers[i])
		got := mountEStargz(t, l, i == 0)
		wantTree, err := fstree.Describe(want)
		if err != nil {
			t.Fatal(err)
		}
		gotTree, err := fstree.Describe(got)
		if err != nil {
			t.Fatal(err)
		}
		if len(wantTree) < 1000 {
			t.Fatalf("the Debian layer has only %d paths", len(wantTree))
		}
		diffs := fstree.Diff(wantTree, gotTree)
		for _, d := range diffs[:min(len(diffs), 20)] {
			t.Error(d)
		}
		if len(diffs) > 0 {
			t.Fatalf("layer %d: %d of %d paths differ", i, len(diffs), len(wantTree))
		}
		t.Logf("layer %d: %d paths identical", i, len(wantTree))
	}
}

func extract(t *testing.T, l *harness.Layer) string {
	t.Helper()
	r, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	if _, err := archive.Apply(context.Background(), dir, r, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mountEStargz(t *testing.T, l *harness.Layer, bottom bool) string {
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
	if bottom {
		idx.DropWhiteouts()
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

func digestOf(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatalf("TOC digest annotation %q: %v", s, err)
	}
	return d
}
