package images

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"

	"github.com/rillstream/rill/test/harness"
	"github.com/rillstream/rill/test/manifest"
)

// TestFixtureCheckerAgreesWithUnpack unpacks the fixture's layers with containerd's own archive
// code into a directory, runs the checker there (chroot), and expects exactly the manifest the
// test computes from the layers. Then it damages the unpacked tree in each way an unpacker could
// get wrong and expects the checker to see it: the e2e comparison cannot pass on wrong content.
func TestFixtureCheckerAgreesWithUnpack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (it unpacks files owned by other users and chroots); run it as root after `bash %s`", harness.SetupScript)
	}
	ctx := t.Context()
	repoRoot, err := harness.RepoRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Fixture(ctx, repoRoot, t.TempDir(), FixtureOptions{BigFileSize: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, unpack(t, img)); got != img.Want {
		t.Fatalf("checker output on a correct unpack differs from the expected manifest:\n%s", manifest.Diff(img.Want, got, 40))
	}

	damages := []struct {
		name   string
		damage func(root string) error
	}{
		{"one byte of content", func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, "fixture/big/random.bin"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{'X'}, 1<<20)
			return err
		}},
		{"a lost setuid bit", func(root string) error { return os.Chmod(filepath.Join(root, "fixture/setuid"), 0o755) }},
		{"a lost sticky bit", func(root string) error { return os.Chmod(filepath.Join(root, "fixture/sticky"), 0o777) }},
		{"an owner", func(root string) error { return os.Lchown(filepath.Join(root, "fixture/owned/link"), 0, 0) }},
		{"a lost xattr", func(root string) error {
			return unix.Removexattr(filepath.Join(root, "fixture/xattrs/file"), "user.rill.color")
		}},
		{"an xattr value", func(root string) error {
			return unix.Setxattr(filepath.Join(root, "fixture/xattrs/dir"), "user.rill.dir", []byte("changed"), 0)
		}},
		{"a broken hardlink", func(root string) error {
			p := filepath.Join(root, "fixture/hard/second")
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.Remove(p); err != nil {
				return err
			}
			if err := os.WriteFile(p, data, 0o640); err != nil {
				return err
			}
			mtime := time.Unix(fixtureEpoch, 0)
			return os.Chtimes(p, mtime, mtime)
		}},
		{"a whiteout ignored", func(root string) error {
			return os.WriteFile(filepath.Join(root, "fixture/deleted.txt"), nil, 0o644)
		}},
		{"an opaque directory ignored", func(root string) error {
			return os.WriteFile(filepath.Join(root, "fixture/opaque/lower-only"), nil, 0o644)
		}},
		{"a symlink target", func(root string) error {
			p := filepath.Join(root, "fixture/links/relative")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("../empty", p)
		}},
		{"an mtime", func(root string) error {
			return os.Chtimes(filepath.Join(root, "fixture/hello.txt"), time.Now(), time.Now())
		}},
		{"a missing file", func(root string) error { return os.Remove(filepath.Join(root, "fixture/empty")) }},
	}
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			root := unpack(t, img)
			if err := d.damage(root); err != nil {
				t.Fatalf("damaging the tree: %v", err)
			}
			if got := run(t, root); got == img.Want {
				t.Errorf("the checker did not notice %s", d.name)
			}
		})
	}
}

// unpack applies the image's layers, in order, into a new directory with containerd's archive
// package (whiteouts and opaque directories applied in place).
func unpack(t *testing.T, img *TestImage) string {
	t.Helper()
	root := t.TempDir()
	for _, l := range img.Spec.Layers {
		r, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		_, err = archive.Apply(context.Background(), root, r)
		r.Close()
		if err != nil {
			t.Fatalf("unpacking %s: %v", l.Path, err)
		}
	}
	return root
}

// run runs the image's command chrooted into root and returns its stdout.
func run(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "chroot", append([]string{root}, checkerCommand()...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chroot %s %v: %v\n%s", root, checkerCommand(), err, stderr.String())
	}
	return stdout.String()
}

func checkerCommand() []string { return append([]string{"/checker"}, checkedRoots()...) }
