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

func describeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	d, err := fstree.Describe(root)
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
		{"empty layer", nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mountEntries(t, c.entries, c.chunkSize)
			want := describeTree(t, extractWithContainerd(t, s.tar))
			got := describeTree(t, s.mountpoint)
			compareTrees(t, want, got)
			if os.Getenv("RILL_DEBUG_TREE") != "" {
				for p, d := range got {
					t.Log(p, d)
				}
			}
		})
	}
}
