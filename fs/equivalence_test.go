package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
	"golang.org/x/sys/unix"
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

// describeTree describes every path under root: type, mode, owner, size, mtime, link target,
// device, xattrs, content hash, and which other path it is hardlinked to. impliedMtime lists
// paths whose mtime is not part of the layer (directories it only implies, whiteouts).
func describeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	firstByInode := map[uint64]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		var b strings.Builder
		fmt.Fprintf(&b, "mode=%v uid=%d gid=%d", fi.Mode(), st.Uid, st.Gid)
		isWhiteout := fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0
		if !fi.IsDir() && !isWhiteout {
			fmt.Fprintf(&b, " mtime=%d", fi.ModTime().Unix())
		}
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", rel, err)
			}
			fmt.Fprintf(&b, " size=%d sha256=%x", fi.Size(), h.Sum(nil))
			if st.Nlink > 1 {
				if first, ok := firstByInode[st.Ino]; ok {
					fmt.Fprintf(&b, " hardlink-of=%s", first)
				} else {
					firstByInode[st.Ino] = rel
				}
				fmt.Fprintf(&b, " nlink=%d", st.Nlink)
			}
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " target=%s", target)
		case fi.Mode()&os.ModeDevice != 0:
			fmt.Fprintf(&b, " dev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		fmt.Fprintf(&b, " xattrs=%s", xattrsOf(t, p))
		out[rel] = b.String()
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func xattrsOf(t *testing.T, p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "error:" + err.Error()
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var parts []string
	for _, name := range names {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			parts = append(parts, name+"=error:"+err.Error())
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%q", name, v[:m]))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func compareTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		if want[p] != got[p] {
			t.Errorf("%s:\n  containerd: %s\n  rill:       %s", p, want[p], got[p])
		}
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
			delete(want, ".") // the roots differ: a mountpoint vs a directory
			delete(got, ".")
			compareTrees(t, want, got)
			if os.Getenv("RILL_DEBUG_TREE") != "" {
				for p, d := range got {
					t.Log(p, d)
				}
			}
		})
	}
}
