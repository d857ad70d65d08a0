package fs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/fstree"
	"github.com/rillstream/rill/internal/testlayer"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("these tests mount FUSE filesystems and must run as root (make test runs them as root)")
	}
}

// streamedLayer is a test layer converted to eStargz and mounted through rill's FUSE layer.
type streamedLayer struct {
	tar        []byte
	blob       []byte
	layer      convert.Layer
	mountpoint string
}

func mountEntries(t *testing.T, entries []testlayer.Entry, chunkSize int) *streamedLayer {
	t.Helper()
	return mountLayer(t, entries, chunkSize, nil)
}

// mountEntriesOnto mounts a layer above the layers at lowers (topmost first): its implied
// directories inherit their metadata.
func mountEntriesOnto(t *testing.T, entries []testlayer.Entry, lowers []string) *streamedLayer {
	t.Helper()
	return mountLayer(t, entries, 0, lowers)
}

func mountLayer(t *testing.T, entries []testlayer.Entry, chunkSize int, lowers []string) *streamedLayer {
	t.Helper()
	requireRoot(t)
	tarBytes, err := testlayer.Tar(entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	l, err := convert.ConvertLayer(context.Background(), bytes.NewReader(testlayer.Gzip(tarBytes)), &blob, convert.LayerOptions{ChunkSize: chunkSize})
	if err != nil {
		t.Fatal(err)
	}
	s := &streamedLayer{tar: tarBytes, blob: blob.Bytes(), layer: l, mountpoint: filepath.Join(t.TempDir(), "mnt")}
	ctx := context.Background()
	toc, err := LoadTOC(ctx, bytes.NewReader(s.blob), int64(len(s.blob)), l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	if lowers != nil {
		if err := idx.InheritImplied(lowers); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(s.mountpoint, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(ctx, s.mountpoint, idx, bytes.NewReader(s.blob), MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(context.Background()); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return s
}

// extractWithContainerd unpacks a tar layer the way containerd does for an overlayfs
// snapshot: whiteouts become 0/0 character devices, opaque markers an xattr.
func extractWithContainerd(t *testing.T, tarBytes []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "extracted")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Apply(context.Background(), dir, bytes.NewReader(tarBytes), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// describeTree describes the tree at root, leaving out the mtimes of the directories that the
// layer tarBytes only implies (extraction creates them at the time it runs).
func describeTree(t *testing.T, root string, tarBytes []byte) map[string]string {
	t.Helper()
	implied, err := fstree.ImpliedDirs(bytes.NewReader(tarBytes))
	if err != nil {
		t.Fatal(err)
	}
	d, err := fstree.Describe(root, implied)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func compareTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
}

// The streamed layer is bit-identical to what containerd extracts from the original layer.
func TestMountedLayerEqualsExtractedLayer(t *testing.T) {
	cases := []struct {
		name      string
		entries   []testlayer.Entry
		chunkSize int
	}{
		{"every kind of entry, 64 KiB chunks", testlayer.EveryKind(), 64 << 10},
		{"every kind of entry, default chunks", testlayer.EveryKind(), 0},
		{"only implied directories", []testlayer.Entry{testlayer.Reg("a/b/c/d", []byte("deep\n"), 0o640)}, 0},
		{"directories implied in a set-group-ID directory", []testlayer.Entry{setgidDir("shared/", 33), testlayer.Reg("shared/implied/deeper/file", []byte("group\n"), 0o640)}, 0},
		{"empty layer", nil, 0},
		{"duplicates, ./, names that are not UTF-8, sub-second and pre-1970 times", testlayer.RootfsQuirks(), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mountEntries(t, c.entries, c.chunkSize)
			want := describeTree(t, extractWithContainerd(t, s.tar), s.tar)
			got := describeTree(t, s.mountpoint, s.tar)
			compareTrees(t, want, got)
			if os.Getenv("RILL_DEBUG_TREE") != "" {
				for p, d := range got {
					t.Log(p, d)
				}
			}
		})
	}
}

// An upper layer mounted onto the layers below it is what containerd extracts onto its parents
// for overlayfs: the directories it only implies take the metadata of the same directory
// below (mode, owner, xattrs but trusted.*), following symlinks below as containerd does, and
// keep the defaults where the path below is not a directory or not there.
func TestUpperLayerEqualsExtractionOntoItsParents(t *testing.T) {
	withXattr := func(e testlayer.Entry, k, v string) testlayer.Entry {
		e.Header.PAXRecords = map[string]string{"SCHILY.xattr." + k: v}
		return e
	}
	owned := func(e testlayer.Entry, uid int) testlayer.Entry {
		e.Header.Uid, e.Header.Gid = uid, uid
		return e
	}
	lower := []testlayer.Entry{
		withXattr(testlayer.Dir("tmp/", 0o1777), "user.below", "kept"),
		owned(testlayer.Dir("opt/", 0o2750), 5),
		testlayer.Reg("replaced", []byte("a file below\n"), 0o644),
		testlayer.Dir("usr/", 0o755),
		owned(testlayer.Dir("usr/lib/", 0o700), 7),
		testlayer.Symlink("lib", "usr/lib"),
	}
	upper := []testlayer.Entry{
		testlayer.Reg("tmp/added", []byte("x\n"), 0o644),
		testlayer.Reg("opt/new/deeper/file", []byte("y\n"), 0o644), // opt/new: not below
		testlayer.Reg("replaced/file", []byte("z\n"), 0o644),       // a file below
		testlayer.Reg("lib/through-a-symlink-below", []byte("w\n"), 0o644),
		testlayer.Reg("nowhere-below/file", []byte("v\n"), 0o644),
	}
	lowerLayer := mountEntries(t, lower, 0)
	lowerTar := lowerLayer.tar
	wantLower := extractWithContainerd(t, lowerTar)

	upperTar, err := testlayer.Tar(upper, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(t.TempDir(), "upper")
	if err := os.Mkdir(want, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Apply(context.Background(), want, bytes.NewReader(upperTar),
		archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents([]string{wantLower})); err != nil {
		t.Fatal(err)
	}
	got := mountEntriesOnto(t, upper, []string{lowerLayer.mountpoint})
	compareTrees(t, describeTree(t, want, upperTar), describeTree(t, got.mountpoint, upperTar))
	if fi, err := os.Stat(filepath.Join(got.mountpoint, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp, implied above a sticky tmp: %v, %v", fi.Mode(), err)
	}
}

// setgidDir is a set-group-ID directory of group gid.
func setgidDir(name string, gid int) testlayer.Entry {
	d := testlayer.Dir(name, 0o2775)
	d.Header.Gid = gid
	return d
}
