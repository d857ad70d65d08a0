package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
)

var chunkDigest = digest.FromString("chunk").String()

func reg(name string, size, offset int64) *estargz.TOCEntry {
	return &estargz.TOCEntry{Name: name, Type: "reg", Size: size, Offset: offset, ChunkSize: size, ChunkDigest: chunkDigest, Mode: 0o644}
}

// rillTOC wraps estargz entries in rill's TOC type (without extension fields).
func rillTOC(entries []*estargz.TOCEntry) *artifact.JTOC {
	toc := &artifact.JTOC{Version: 1}
	for _, e := range entries {
		if e == nil {
			toc.Entries = append(toc.Entries, nil)
			continue
		}
		toc.Entries = append(toc.Entries, &artifact.TOCEntry{TOCEntry: *e})
	}
	return toc
}

func tocOf(entries ...*estargz.TOCEntry) *TOC {
	return &TOC{JTOC: rillTOC(entries), Offset: 10_000, BlobSize: 10_100}
}

// hugeTOC is a TOC of a 1 TiB blob (whose data ends just before its end).
func hugeTOC(entries ...*estargz.TOCEntry) *TOC {
	return &TOC{JTOC: rillTOC(entries), Offset: 1 << 40, BlobSize: 1<<40 + 100}
}

// Hostile or broken TOCs are refused before anything is mounted.
func TestNewIndexRejectsHostileTOCs(t *testing.T) {
	cases := []struct {
		name string
		toc  *TOC
		want string
	}{
		{"parent escape", tocOf(reg("../etc/passwd", 1, 100)), "escapes"},
		{"escape in the middle", tocOf(reg("a/../../etc/shadow", 1, 100)), "escapes"},
		{"dot component", tocOf(reg("a/./b", 1, 100)), "'.' component"},
		{"empty component", tocOf(reg("a//b", 1, 100)), "empty"},
		{"NUL in name", tocOf(reg("a\x00b", 1, 100)), "NUL"},
		{"name too long", tocOf(reg(strings.Repeat("x", 256), 1, 100)), "longer"},
		{"file under a file", tocOf(reg("a", 1, 100), reg("a/b", 1, 200)), "not a directory"},
		{"unknown type", tocOf(&estargz.TOCEntry{Name: "x", Type: "socket"}), "unknown entry type"},
		{"negative size", tocOf(&estargz.TOCEntry{Name: "x", Type: "reg", Size: -1}), "negative"},
		{"data after the TOC", tocOf(reg("a", 1, 10_000)), "outside"},
		{"data at offset 0", tocOf(reg("a", 1, 0)), "outside"},
		{"bad chunk digest", tocOf(&estargz.TOCEntry{Name: "a", Type: "reg", Size: 1, Offset: 100, ChunkDigest: "md5:xyz"}), "digest"},
		{"chunks that do not cover the file", tocOf(&estargz.TOCEntry{Name: "a", Type: "reg", Size: 100, Offset: 100, ChunkSize: 50, ChunkDigest: chunkDigest}), "end at 50"},
		{"chunk with a gap", tocOf(
			&estargz.TOCEntry{Name: "a", Type: "reg", Size: 100, Offset: 100, ChunkSize: 40, ChunkDigest: chunkDigest},
			&estargz.TOCEntry{Name: "a", Type: "chunk", Offset: 200, ChunkOffset: 50, ChunkSize: 50, ChunkDigest: chunkDigest}), "does not follow"},
		{"chunk of another file", tocOf(
			&estargz.TOCEntry{Name: "a", Type: "reg", Size: 100, Offset: 100, ChunkSize: 50, ChunkDigest: chunkDigest},
			&estargz.TOCEntry{Name: "b", Type: "chunk", Offset: 200, ChunkOffset: 50, ChunkSize: 50, ChunkDigest: chunkDigest}), "does not follow"},
		{"chunk stored backwards", tocOf(
			&estargz.TOCEntry{Name: "a", Type: "reg", Size: 100, Offset: 300, ChunkSize: 50, ChunkDigest: chunkDigest},
			&estargz.TOCEntry{Name: "a", Type: "chunk", Offset: 200, ChunkOffset: 50, ChunkSize: 50, ChunkDigest: chunkDigest}), "before the previous"},
		{"two chunks in one member", tocOf(reg("a", 1, 100), reg("b", 1, 100)), "two chunks"},
		{"grouped chunks", tocOf(&estargz.TOCEntry{Name: "a", Type: "reg", Size: 1, Offset: 100, InnerOffset: 5, ChunkDigest: chunkDigest}), "innerOffset"},
		{"hardlink to nothing", tocOf(&estargz.TOCEntry{Name: "a", Type: "hardlink", LinkName: "missing"}), "not an earlier regular file"},
		{"hardlink escaping", tocOf(&estargz.TOCEntry{Name: "a", Type: "hardlink", LinkName: "../x"}), "invalid"},
		{"hardlink to a directory", tocOf(&estargz.TOCEntry{Name: "d", Type: "dir"}, &estargz.TOCEntry{Name: "a", Type: "hardlink", LinkName: "d"}), "not an earlier regular file"},
		{"empty symlink", tocOf(&estargz.TOCEntry{Name: "a", Type: "symlink"}), "symlink target"},
		{"device number out of range", tocOf(&estargz.TOCEntry{Name: "a", Type: "char", DevMajor: 1 << 20}), "out of range"},
		{"null entry", tocOf(nil), "null"},
		{"xattr value too long", tocOf(&estargz.TOCEntry{Name: "d", Type: "dir", Xattrs: map[string][]byte{"user.big": make([]byte, 64<<10+1)}}), "longer than"},
		{"xattr without a name", tocOf(&estargz.TOCEntry{Name: "d", Type: "dir", Xattrs: map[string][]byte{"": []byte("x")}}), "xattr name"},
		// Memory bombs: the size of a chunk, or of the blob span fetched with it, is what a read,
		// prefetch or the background fetch allocates.
		{"64 GiB file in one chunk", hugeTOC(&estargz.TOCEntry{Name: "a", Type: "reg", Size: 64 << 30, Offset: 100, ChunkDigest: chunkDigest}), "more than the limit"},
		{"chunk just over the limit", hugeTOC(
			&estargz.TOCEntry{Name: "a", Type: "reg", Size: 2*MaxChunkSize + 1, Offset: 100, ChunkSize: MaxChunkSize, ChunkDigest: chunkDigest},
			&estargz.TOCEntry{Name: "a", Type: "chunk", Offset: 200, ChunkOffset: MaxChunkSize, ChunkDigest: chunkDigest}), "more than the limit"},
		{"chunk whose blob span is too long", hugeTOC(reg("a", 1, 100)), "more than the limit"},
		{"headers before the first chunk too long", hugeTOC(reg("a", 1, 1<<40-10)), "more than the limit"},
		{"headers of a layer without data too long", hugeTOC(&estargz.TOCEntry{Name: "d", Type: "dir"}), "more than the limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewIndex(c.toc)
			if !errors.Is(err, ErrInvalidTOC) {
				t.Fatalf("accepted (err %v)", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}

// estargz writers never produce absolute names; one in a TOC is refused, not reinterpreted.
func TestNewIndexRefusesAbsoluteNames(t *testing.T) {
	if _, err := NewIndex(tocOf(reg("/etc/passwd", 1, 100))); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("absolute name: %v", err)
	}
}

func TestNewIndexBuildsImpliedDirectoriesAndHidesBookkeeping(t *testing.T) {
	idx, err := NewIndex(tocOf(
		reg("usr/lib/x/libx.so", 10, 100),
		&estargz.TOCEntry{Name: estargz.PrefetchLandmark, Type: "reg", Size: 1, Offset: 200, ChunkDigest: chunkDigest},
		&estargz.TOCEntry{Name: "usr/", Type: "dir", Mode: 0o700, UID: 5},
	))
	if err != nil {
		t.Fatal(err)
	}
	usr := idx.Root.Child("usr")
	if usr == nil || usr.Implied || usr.Mode != 0o700 || usr.UID != 5 {
		t.Fatalf("usr listed after its children must take the listed metadata: %+v", usr)
	}
	if lib := usr.Child("lib"); lib == nil || !lib.Implied || lib.Mode != 0o755 {
		t.Fatalf("usr/lib must be implied 0755: %+v", lib)
	}
	if idx.Root.Child(estargz.PrefetchLandmark) != nil {
		t.Fatal("the prefetch landmark is visible")
	}
	if idx.Files != 1 || idx.Bytes != 10 {
		t.Fatalf("files %d bytes %d", idx.Files, idx.Bytes)
	}
}

func convertedBlob(t testing.TB, entries []testlayer.Entry) ([]byte, convert.Layer) {
	t.Helper()
	tarBytes, err := testlayer.Tar(entries, 0)
	if err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	l, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return blob.Bytes(), l
}

func TestLoadTOC(t *testing.T) {
	blob, l := convertedBlob(t, testlayer.EveryKind())
	ctx := context.Background()
	load := func(b []byte, d digest.Digest, limits Limits) error {
		_, err := LoadTOC(ctx, bytes.NewReader(b), int64(len(b)), d, limits)
		return err
	}
	if err := load(blob, l.TOCDigest, Limits{}); err != nil {
		t.Fatalf("valid layer: %v", err)
	}
	cases := []struct {
		name   string
		blob   []byte
		digest digest.Digest
		limits Limits
		want   string
	}{
		{"TOC digest differs from the image's", blob, digest.FromString("other"), Limits{}, "the image records"},
		{"no digest", blob, "", Limits{}, "TOC digest"},
		{"TOC larger than the limit", blob, l.TOCDigest, Limits{MaxTOCBytes: 100}, "larger than the limit"},
		{"too many entries", blob, l.TOCDigest, Limits{MaxEntries: 3}, "more than the limit"},
		{"truncated blob", blob[:len(blob)-10], l.TOCDigest, Limits{}, ""},
		{"tiny blob", blob[:20], l.TOCDigest, Limits{}, "smaller than"},
		{"not eStargz", testlayer.Gzip([]byte(strings.Repeat("x", 1000))), l.TOCDigest, Limits{}, "footer"},
		// A gzip extra field shorter than its subfield length claims: estargz's own footer
		// parser panics on it (found by FuzzLoadTOC).
		{"footer with a short extra field", append(bytes.Clone(blob[:100]), "\x1f\x8b\b$000000\x10\x00SG\x16\x0000000000000000000000000000000000000"...), l.TOCDigest, Limits{}, "footer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := load(c.blob, c.digest, c.limits)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}

// Whatever the TOC, NewIndex never panics, and what it accepts is a tree whose chunks lie
// inside the blob's data.
func FuzzNewIndex(f *testing.F) {
	blob, l := convertedBlob(f, testlayer.EveryKind())
	toc, err := LoadTOC(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{})
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := json.Marshal(toc.JTOC)
	f.Add(seed, toc.Offset)
	f.Add([]byte(`{"version":1,"entries":[{"name":"a/../b","type":"reg","size":1,"offset":5}]}`), int64(100))
	// Memory bombs: a 64 GiB chunk, a chunk whose blob span is 1 TiB.
	f.Add([]byte(`{"version":1,"entries":[{"name":"a","type":"reg","size":68719476736,"offset":100,"chunkDigest":"`+chunkDigest+`"}]}`), int64(1<<40))
	f.Add([]byte(`{"version":1,"entries":[{"name":"a","type":"reg","size":1,"offset":100,"chunkDigest":"`+chunkDigest+`"}]}`), int64(1<<40))
	f.Add([]byte(`{"version":1,"entries":[{"name":"d","type":"dir","xattrs":{"":"eA=="}}]}`), int64(100))
	// Paths listed twice, a directory replaced by a file, names in rill's extension fields.
	f.Add([]byte(`{"version":1,"entries":[{"name":"./","type":"dir","mode":448},{"name":"d/","type":"dir"},{"name":"d/a","type":"reg","size":1,"offset":5,"chunkDigest":"`+chunkDigest+`"},{"name":"d/h","type":"hardlink","linkName":"d/a"},{"name":"d","type":"reg"},{"name":"d","type":"symlink","linkName":"x"},{"name":"d","type":"dir"},{"name":"�","rillName":"/w==","type":"reg","rillModTime":"1960-01-01T00:00:00.5Z"},{"name":"l","type":"symlink","linkName":"�","rillLinkName":"/w=="}]}`), int64(100))
	f.Fuzz(func(t *testing.T, tocJSON []byte, tocOffset int64) {
		jtoc, err := artifact.DecodeTOC(tocJSON)
		if err != nil {
			return
		}
		idx, err := NewIndex(&TOC{JTOC: jtoc, Offset: tocOffset, BlobSize: tocOffset + 51})
		if err != nil {
			return
		}
		var walk func(n *Node)
		walk = func(n *Node) {
			for _, c := range n.Chunks {
				if c.BlobOffset <= 0 || c.BlobEnd > tocOffset || c.BlobOffset >= c.BlobEnd || c.Size <= 0 {
					t.Fatalf("accepted a chunk outside the data: %+v (data ends at %d)", c, tocOffset)
				}
				if c.Size > MaxChunkSize || c.BlobEnd-c.BlobOffset > MaxSegmentSize {
					t.Fatalf("accepted a chunk larger than the limits: %+v", c)
				}
			}
			for _, name := range n.Names {
				if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
					t.Fatalf("accepted the name %q", name)
				}
				walk(n.Child(name))
			}
		}
		walk(idx.Root)
	})
}

func mustDigest(t testing.TB, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
