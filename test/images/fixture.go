package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/test/harness"
)

// FixtureOptions shape the fixture image.
type FixtureOptions struct {
	// Repository is the image's path in the registry ("rill/fixture:v1" when empty).
	Repository string
	// BigFileSize is the size of /fixture/big/random.bin, alone in the top layer; 0 leaves
	// that layer out (a quick image for the demo).
	BigFileSize int64
}

// checkedRoots are the paths the checker walks (and the expected manifest covers): the runtime
// adds /proc, /dev, /etc/hosts... elsewhere.
func checkedRoots() []string { return []string{"/checker", "/fixture"} }

// Fixture builds the fixture image's layers in dir: the checker binary (compiled from this
// repository), a base layer, a layer of changes (whiteouts, an opaque directory, replacements)
// and, if asked, a layer with one large pseudo-random file. The expected output of the checker
// is computed from those layers.
func Fixture(ctx context.Context, repoRoot, dir string, opts FixtureOptions) (*TestImage, error) {
	if opts.Repository == "" {
		opts.Repository = "rill/fixture:v1"
	}
	checker := filepath.Join(dir, "checker")
	if err := harness.BuildGo(ctx, repoRoot, "./test/cmd/checker", checker, true); err != nil {
		return nil, fmt.Errorf("building the checker: %w", err)
	}
	checkerLayer, err := harness.SingleFileLayer(filepath.Join(dir, "layer-checker.tar.gz"), checker, "checker")
	if err != nil {
		return nil, err
	}
	layers := []*harness.Layer{checkerLayer}
	for i, members := range [][]member{baseLayer(), changesLayer(), edgesLayer(), quirksLayer()} {
		l, err := writeLayer(filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i+1)), gzip.DefaultCompression, members)
		if err != nil {
			return nil, fmt.Errorf("writing fixture layer %d: %w", i+1, err)
		}
		layers = append(layers, l)
	}
	if opts.BigFileSize > 0 {
		l, err := writeLayer(filepath.Join(dir, "layer-big.tar.gz"), gzip.BestSpeed, bigLayer(opts.BigFileSize))
		if err != nil {
			return nil, fmt.Errorf("writing the fixture's big layer: %w", err)
		}
		layers = append(layers, l)
	}
	want, err := expectedManifest(layers, checkedRoots()...)
	if err != nil {
		return nil, fmt.Errorf("computing the fixture's expected manifest: %w", err)
	}
	command := append([]string{"/checker"}, checkedRoots()...)
	return &TestImage{
		Repository: opts.Repository,
		Spec:       harness.ImageSpec{Layers: layers, Config: v1.Config{Cmd: command}},
		Command:    command,
		Want:       want,
	}, nil
}

// baseLayer holds one of each kind of entry, with the metadata an unpacker must keep.
func baseLayer() []member {
	long := "fixture/long/" + strings.Repeat("d", 60) + "/" + strings.Repeat("f", 150) + ".txt"
	return []member{
		dir("fixture", 0o755, 0, 0),
		file("fixture/hello.txt", 0o644, 0, 0, "hello from rill\n"),
		file("fixture/empty", 0o600, 0, 0, ""),
		file("fixture/setuid", 0o4755, 0, 0, "#!/bin/false setuid\n"),
		file("fixture/setgid", 0o2711, 0, 50, "setgid\n"),
		file("fixture/all-special", 0o7755, 1000, 1000, "setuid+setgid+sticky on a file owned by 1000\n"),
		dir("fixture/sticky", 0o1777, 0, 0),
		file("fixture/sticky/inside", 0o666, 33, 33, "in a sticky directory\n"),
		dir("fixture/setgid-dir", 0o2775, 0, 100),
		dir("fixture/owned", 0o750, 1000, 1000),
		file("fixture/owned/secret", 0o600, 1000, 1000, "owned by 1000:1000\n"),
		file("fixture/owned/nobody", 0o640, 65534, 65534, "owned by nobody\n"),
		file("fixture/owned/large-ids", 0o644, 4000000, 3000000, "ids beyond the ustar octal range\n"),
		symlink("fixture/owned/link", "secret", 1000, 1000),
		dir("fixture/names", 0o755, 0, 0),
		file("fixture/names/with space.txt", 0o644, 0, 0, "a space\n"),
		file("fixture/names/ünïcødé ✓.txt", 0o644, 0, 0, "utf-8 name\n"),
		file("fixture/names/.hidden", 0o644, 0, 0, "dot file\n"),
		file("fixture/names/-dash", 0o644, 0, 0, "leading dash\n"),
		dir("fixture/long", 0o755, 0, 0),
		dir("fixture/long/"+strings.Repeat("d", 60), 0o755, 0, 0),
		file(long, 0o644, 0, 0, "a path longer than 100 bytes\n"),
		dir("fixture/links", 0o755, 0, 0),
		symlink("fixture/links/relative", "../hello.txt", 0, 0),
		symlink("fixture/links/absolute", "/fixture/hello.txt", 0, 0),
		symlink("fixture/links/dangling", "does/not/exist", 0, 0),
		symlink("fixture/links/to-dir", "../names", 0, 0),
		dir("fixture/hard", 0o755, 0, 0),
		file("fixture/hard/original", 0o640, 0, 0, "one inode, three names\n"),
		hardlink("fixture/hard/second", "fixture/hard/original", 0o640, 0, 0),
		hardlink("fixture/hard-elsewhere", "fixture/hard/original", 0o640, 0, 0),
		fifo("fixture/fifo", 0o620),
		dir("fixture/xattrs", 0o755, 0, 0),
		withXattrs(file("fixture/xattrs/file", 0o644, 0, 0, "has user xattrs\n"), map[string]string{
			"user.rill.color": "blue",
			"user.rill.empty": "",
			"user.rill.bytes": "\x00\x01\xfe\xff binary",
		}),
		withXattrs(dir("fixture/xattrs/dir", 0o755, 0, 0), map[string]string{"user.rill.dir": "on a directory"}),
		// Changed or hidden by the next layer:
		file("fixture/deleted.txt", 0o644, 0, 0, "deleted by a whiteout above\n"),
		dir("fixture/deleted-dir", 0o755, 0, 0),
		file("fixture/deleted-dir/child", 0o644, 0, 0, "deleted with its directory\n"),
		dir("fixture/opaque", 0o755, 0, 0),
		file("fixture/opaque/lower-only", 0o644, 0, 0, "hidden by the opaque directory above\n"),
		dir("fixture/opaque/lower-dir", 0o755, 0, 0),
		file("fixture/opaque/lower-dir/file", 0o644, 0, 0, "hidden too\n"),
		file("fixture/opaque/kept-name", 0o644, 0, 0, "version from below, replaced\n"),
		file("fixture/replaced.txt", 0o644, 0, 0, "version 1\n"),
		dir("fixture/dir-to-file", 0o755, 0, 0),
		file("fixture/dir-to-file/child", 0o644, 0, 0, "gone when the directory becomes a file\n"),
		file("fixture/file-to-dir", 0o644, 0, 0, "becomes a directory\n"),
		dir("fixture/merged", 0o755, 0, 0),
		file("fixture/merged/from-below", 0o644, 0, 0, "stays visible\n"),
	}
}

// changesLayer changes the base layer the ways image layers do.
func changesLayer() []member {
	return []member{
		whiteout("fixture/deleted.txt"),
		whiteout("fixture/deleted-dir"),
		dir("fixture/opaque", 0o711, 1000, 1000),
		opaque("fixture/opaque"),
		file("fixture/opaque/upper-only", 0o644, 0, 0, "the only old-style name left\n"),
		file("fixture/opaque/kept-name", 0o600, 0, 0, "version from above\n"),
		file("fixture/replaced.txt", 0o600, 1000, 1000, "version 2, longer than version 1\n"),
		file("fixture/dir-to-file", 0o644, 0, 0, "was a directory\n"),
		dir("fixture/file-to-dir", 0o700, 0, 0),
		file("fixture/file-to-dir/child", 0o644, 0, 0, "inside what was a file\n"),
		file("fixture/merged/from-above", 0o644, 0, 0, "merged with the directory below\n"),
		file("fixture/hard/upper-a", 0o644, 0, 0, "a hardlink pair in an upper layer\n"),
		hardlink("fixture/hard/upper-b", "fixture/hard/upper-a", 0o644, 0, 0),
		dir("fixture/owned", 0o755, 2000, 2000), // metadata change of a lower directory
	}
}

// edgesLayer holds what layers seldom hold but an unpacker must get right all the same:
// entries whose parent directories the layer does not list (some image tools omit them), the
// longest names a file system takes (255 bytes, in ASCII and in two-byte UTF-8), unicode names
// (CJK, emoji, right-to-left, the same letter composed and decomposed), and files that are
// mostly zeros: holes in the file they were made from, which a tar layer stores as zeros.
func edgesLayer() []member {
	return []member{
		// No entries for fixture/implied, fixture/implied/a, fixture/implied/a/b or
		// fixture/implied/c: the layer only implies them.
		file("fixture/implied/a/b/deep.txt", 0o640, 1000, 1000, "all my parents are implied\n"),
		hardlink("fixture/implied/a/b/deep-link.txt", "fixture/implied/a/b/deep.txt", 0o640, 1000, 1000),
		symlink("fixture/implied/c/link", "../a/b/deep.txt", 0, 0),
		dir("fixture/edge-names", 0o755, 0, 0),
		file("fixture/edge-names/"+strings.Repeat("n", 251)+".txt", 0o644, 0, 0, "a 255-byte name\n"),
		file("fixture/edge-names/"+strings.Repeat("é", 127)+"x", 0o644, 0, 0, "a 255-byte name of two-byte letters\n"),
		file("fixture/edge-names/日本語のファイル名.txt", 0o644, 0, 0, "CJK\n"),
		file("fixture/edge-names/emoji 🦀😀.txt", 0o644, 0, 0, "emoji\n"),
		file("fixture/edge-names/עברית العربية", 0o644, 0, 0, "right to left\n"),
		file("fixture/edge-names/caf\u00e9", 0o644, 0, 0, "é composed (NFC)\n"),
		file("fixture/edge-names/cafe\u0301", 0o644, 0, 0, "é decomposed (NFD): another name\n"),
		dir("fixture/sparse", 0o755, 0, 0),
		bigFile("fixture/sparse/holes.bin", 0o644, 40<<20, io.MultiReader(
			strings.NewReader("head\n"), zeros(16<<20-5), // 16 MiB
			strings.NewReader("middle\n"), zeros(24<<20-7-5), // 24 MiB
			strings.NewReader("tail\n"))),
		bigFile("fixture/sparse/all-zeros.bin", 0o600, 8<<20, zeros(8<<20)),
	}
}

// EquivalenceLayer holds what the fixture image cannot carry to the e2e checker — device
// nodes (manifest.Tree does not model them, and a runtime provides /dev), and a directory that
// the layer only implies above a directory of a lower layer whose mode is not the default (an
// unpacker gives it the lower directory's mode, owner and xattrs: containerd's WithParents) —
// for the in-process equivalence test, which stacks it on the fixture's layers.
func EquivalenceLayer(path string) (*harness.Layer, error) {
	dev := func(typ byte, name string, major, minor int64) member {
		h := header(typ, name, 0o660, 0, 6)
		h.Devmajor, h.Devminor = major, minor
		return member{hdr: h}
	}
	return writeLayer(path, gzip.DefaultCompression, []member{
		dir("devices", 0o755, 0, 0),
		dev(tar.TypeChar, "devices/null", 1, 3),
		dev(tar.TypeChar, "devices/tty-high-minor", 136, 70000),
		dev(tar.TypeBlock, "devices/loop0", 7, 0),
		fifo("devices/fifo", 0o600),
		// fixture/sticky (1777) and fixture/xattrs/dir (an xattr) come from the base layer.
		file("fixture/sticky/added-without-listing-the-dir", 0o644, 0, 0, "in a directory implied over a sticky one\n"),
		file("fixture/xattrs/dir/added", 0o644, 0, 0, "in a directory implied over one with xattrs\n"),
		// A whiteout and an opaque directory in a directory the layer only implies.
		whiteout("fixture/implied/a/b/deep-link.txt"),
		opaque("fixture/edge-names"),
		file("fixture/edge-names/only-this", 0o644, 0, 0, "the opaque directory's only entry\n"),
	})
}

// bigLayer holds one large file of deterministic pseudo-random bytes (incompressible, like most
// of a real image's bulk) and a second name for it.
func bigLayer(size int64) []member {
	var seed [32]byte
	copy(seed[:], "rill e2e fixture: big file seed")
	return []member{
		dir("fixture/big", 0o755, 0, 0),
		bigFile("fixture/big/random.bin", 0o644, size, rand.NewChaCha8(seed)),
		hardlink("fixture/big/random-link.bin", "fixture/big/random.bin", 0o644, 0, 0),
	}
}

// quirksLayer holds testlayer.RootfsQuirks below fixture/quirks: the layer's own "./" entry
// (which extraction ignores), paths listed twice (the last entry wins), names and link targets
// that are not UTF-8, and modification times with nanoseconds and before 1970.
func quirksLayer() []member {
	var members []member
	for _, e := range testlayer.RootfsQuirks() {
		h := e.Header
		if h.Name != "./" {
			h.Name = "fixture/quirks/" + h.Name
			if h.Typeflag == tar.TypeLink {
				h.Linkname = "fixture/quirks/" + h.Linkname
			}
		}
		members = append(members, member{hdr: &h, content: bytes.NewReader(e.Body)})
	}
	return members
}
