package convert

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
)

// tarOf is testlayer.Tar for tests.
func tarOf(t testing.TB, entries []testlayer.Entry, padTo int) []byte {
	t.Helper()
	b, err := testlayer.Tar(entries, padTo)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipOf(_ testing.TB, b []byte) []byte { return testlayer.Gzip(b) }

func decompressAll(t testing.TB, blob []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr) // multistream: every gzip member
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func convert(t testing.TB, input []byte, opts LayerOptions) ([]byte, Layer) {
	t.Helper()
	var out bytes.Buffer
	l, err := ConvertLayer(context.Background(), bytes.NewReader(input), &out, opts)
	if err != nil {
		t.Fatalf("ConvertLayer: %v", err)
	}
	return out.Bytes(), l
}

func TestConvertLayerIsBytePreserving(t *testing.T) {
	cases := []struct {
		name  string
		input func(t *testing.T) (tarBytes, layer []byte)
		opts  LayerOptions
	}{
		{"gzip layer", func(t *testing.T) ([]byte, []byte) { b := tarOf(t, testlayer.EveryKind(), 0); return b, gzipOf(t, b) }, LayerOptions{ChunkSize: 64 << 10}},
		{"plain tar layer", func(t *testing.T) ([]byte, []byte) { b := tarOf(t, testlayer.EveryKind(), 0); return b, b }, LayerOptions{ChunkSize: 64 << 10}},
		{"tar padded to 10 KiB records", func(t *testing.T) ([]byte, []byte) {
			b := tarOf(t, testlayer.EveryKind(), 10240)
			return b, gzipOf(t, b)
		}, LayerOptions{ChunkSize: 64 << 10}},
		{"padded with an odd number of blocks", func(t *testing.T) ([]byte, []byte) {
			b := append(tarOf(t, testlayer.EveryKind(), 0), make([]byte, 512*5)...)
			return b, gzipOf(t, b)
		}, LayerOptions{}},
		{"a little data after the end-of-archive marker, kept", func(t *testing.T) ([]byte, []byte) {
			b := append(tarOf(t, testlayer.EveryKind(), 0), []byte("trailing bytes")...)
			return b, gzipOf(t, b)
		}, LayerOptions{}},
		{"much data after the end-of-archive marker, kept", func(t *testing.T) ([]byte, []byte) {
			b := append(tarOf(t, testlayer.EveryKind(), 0), testlayer.RandomBytes(9, 256<<10)...)
			return b, gzipOf(t, b)
		}, LayerOptions{}},
		{"empty layer", func(t *testing.T) ([]byte, []byte) { b := tarOf(t, nil, 0); return b, gzipOf(t, b) }, LayerOptions{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			original, input := c.input(t)
			blob, l := convert(t, input, c.opts)

			if l.OriginalSize != int64(len(original)) || l.OriginalDiffID != digest.FromBytes(original) {
				t.Fatalf("original described as %d bytes %s, is %d bytes %s", l.OriginalSize, l.OriginalDiffID, len(original), digest.FromBytes(original))
			}
			if l.Digest != digest.FromBytes(blob) || l.Size != int64(len(blob)) {
				t.Fatalf("blob described as %s/%d, is %s/%d", l.Digest, l.Size, digest.FromBytes(blob), len(blob))
			}
			whole := decompressAll(t, blob)
			if !bytes.Equal(whole[:len(original)], original) {
				t.Fatal("the decompressed layer does not start with the original tar bytes")
			}
			if l.DiffID != digest.FromBytes(whole) || l.UncompressedSize != int64(len(whole)) {
				t.Fatalf("diff_id/uncompressed size %s/%d, decompressed layer is %s/%d", l.DiffID, l.UncompressedSize, digest.FromBytes(whole), len(whole))
			}
			if err := VerifyLayer(context.Background(), io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), Expected{
				OriginalDiffID: l.OriginalDiffID, OriginalSize: l.OriginalSize, TOCDigest: l.TOCDigest,
			}); err != nil {
				t.Fatalf("VerifyLayer: %v", err)
			}
		})
	}
}

// Every entry of the original is in the TOC with the same metadata and content, and a puller
// that knows nothing of eStargz extracts exactly the original's entries.
func TestConvertedLayerListsEveryEntry(t *testing.T) {
	entries := testlayer.EveryKind()
	original := tarOf(t, entries, 0)
	blob, l := convert(t, gzipOf(t, original), LayerOptions{ChunkSize: 64 << 10})

	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	if r.TOCDigest() != l.TOCDigest {
		t.Fatalf("TOC digest %s, reported %s", r.TOCDigest(), l.TOCDigest)
	}
	for _, e := range entries {
		name := strings.TrimSuffix(e.Header.Name, "/")
		te, ok := r.Lookup(name)
		if !ok {
			t.Errorf("%s: not in the TOC", name)
			continue
		}
		wantType := map[byte]string{tar.TypeReg: "reg", tar.TypeDir: "dir", tar.TypeSymlink: "symlink", tar.TypeLink: "hardlink", tar.TypeChar: "char", tar.TypeBlock: "block", tar.TypeFifo: "fifo"}[e.Header.Typeflag]
		if te.Type != wantType && !(wantType == "hardlink" && te.Type == "reg") {
			t.Errorf("%s: type %s, want %s", name, te.Type, wantType)
		}
		if e.Header.Typeflag == tar.TypeReg {
			if te.Size != e.Header.Size || te.Stat().Mode().Perm() != e.Header.FileInfo().Mode().Perm() || te.UID != e.Header.Uid {
				t.Errorf("%s: size %d mode %v uid %d, want %d %v %d", name, te.Size, te.Stat().Mode(), te.UID, e.Header.Size, e.Header.FileInfo().Mode(), e.Header.Uid)
			}
			sr, err := r.OpenFile(name)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(sr)
			if !bytes.Equal(got, e.Body) {
				t.Errorf("%s: content differs", name)
			}
		}
		for k, v := range e.Header.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && string(te.Xattrs[x]) != v {
				t.Errorf("%s: xattr %s = %q, want %q", name, x, te.Xattrs[x], v)
			}
		}
	}
	if _, ok := r.Lookup("usr/bin"); !ok {
		t.Error("the TOC lacks the directories a layer only implies")
	}

	// A plain tar reader of the converted layer sees the original's entries and nothing else.
	tr := tar.NewReader(bytes.NewReader(decompressAll(t, blob)))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if len(names) != len(entries) {
		t.Fatalf("a plain tar reader sees %d entries, the original has %d: %v", len(names), len(entries), names)
	}
	for i, e := range entries {
		if names[i] != e.Header.Name {
			t.Errorf("entry %d: %s, want %s", i, names[i], e.Header.Name)
		}
	}
}

func TestConvertLayerRefusesWhatItCannotKeep(t *testing.T) {
	valid := tarOf(t, testlayer.EveryKind(), 0)
	withTOC := tarOf(t, []testlayer.Entry{testlayer.Reg(estargz.TOCTarName, []byte("{}"), 0o644)}, 0)
	corruptGzip := gzipOf(t, valid)
	corruptGzip[len(corruptGzip)/2] ^= 0xff
	cases := []struct {
		name  string
		input []byte
		opts  LayerOptions
		want  string
	}{
		{"no bytes at all", nil, LayerOptions{}, "empty"},
		{"an eStargz layer already", withTOC, LayerOptions{}, "TOC"},
		{"corrupt gzip", corruptGzip, LayerOptions{}, "layer"},
		{"not a tar", []byte(strings.Repeat("this is not a tar archive ", 40)), LayerOptions{}, "tar"},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}, LayerOptions{}, "zstd"},
		{"chunk size too small", valid, LayerOptions{ChunkSize: 100}, "chunk size"},
		{"chunk size too large for nodes", valid, LayerOptions{ChunkSize: 64<<20 + 1}, "above the maximum"},
		{"bad compression level", valid, LayerOptions{CompressionLevel: 12}, "compression level"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ConvertLayer(context.Background(), bytes.NewReader(c.input), io.Discard, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// A layer whose own bytes are broken is corrupt content (rill create exits 9), whatever the
// tar or gzip reader says about it.
func TestConvertLayerCallsBrokenContentCorrupt(t *testing.T) {
	valid := gzipOf(t, tarOf(t, testlayer.EveryKind(), 0))
	flipped := bytes.Clone(valid)
	flipped[len(flipped)/2] ^= 0xff
	cases := map[string][]byte{
		"truncated gzip":       valid[:len(valid)*2/3],
		"gzip without trailer": valid[:len(valid)-4],
		"corrupt gzip":         flipped,
		"truncated plain tar":  tarOf(t, testlayer.EveryKind(), 0)[:3000],
		"no bytes at all":      nil,
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ConvertLayer(context.Background(), bytes.NewReader(input), io.Discard, LayerOptions{})
			if !errors.Is(err, ErrCorruptLayer) {
				t.Fatalf("error %v, want ErrCorruptLayer", err)
			}
		})
	}
	// A failure to write the result is not the layer's fault.
	_, err := ConvertLayer(context.Background(), bytes.NewReader(valid), failingWriter{}, LayerOptions{})
	if err == nil || errors.Is(err, ErrCorruptLayer) {
		t.Fatalf("error %v writing to a failing destination, want a non-corrupt error", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestConvertLayerStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ConvertLayer(ctx, bytes.NewReader(gzipOf(t, tarOf(t, testlayer.EveryKind(), 0))), io.Discard, LayerOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// VerifyLayer catches a layer that does not match what the artifact claims.
func TestVerifyLayerDetectsMismatch(t *testing.T) {
	original := tarOf(t, testlayer.EveryKind(), 0)
	blob, l := convert(t, gzipOf(t, original), LayerOptions{ChunkSize: 64 << 10})
	good := Expected{OriginalDiffID: l.OriginalDiffID, OriginalSize: l.OriginalSize, TOCDigest: l.TOCDigest}
	section := func(b []byte) *io.SectionReader { return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))) }

	other, _ := convert(t, gzipOf(t, tarOf(t, testlayer.EveryKind()[:3], 0)), LayerOptions{})
	flipped := append([]byte{}, blob...)
	flipped[len(flipped)/3] ^= 0x01

	cases := []struct {
		name string
		blob []byte
		want Expected
	}{
		{"wrong diff_id", blob, Expected{OriginalDiffID: digest.FromString("x"), OriginalSize: good.OriginalSize, TOCDigest: good.TOCDigest}},
		{"wrong length", blob, Expected{OriginalDiffID: good.OriginalDiffID, OriginalSize: good.OriginalSize - 512, TOCDigest: good.TOCDigest}},
		{"wrong TOC digest", blob, Expected{OriginalDiffID: good.OriginalDiffID, OriginalSize: good.OriginalSize, TOCDigest: digest.FromString("toc")}},
		{"another layer", other, good},
		{"a flipped byte", flipped, good},
		// A footer whose gzip extra field is shorter than its subfield length claims: the
		// estargz library's footer parser panics on it; rill verify must say it is invalid.
		{"a footer with a short extra field", append(bytes.Clone(blob[:len(blob)-51]), "\x1f\x8b\b$000000\x10\x00SG\x16\x0000000000000000000000000000000000000"...), good},
		{"shorter than a footer", blob[:20], good},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := VerifyLayer(context.Background(), section(c.blob), c.want); err == nil {
				t.Fatal("VerifyLayer accepted a layer that does not match")
			}
		})
	}
}

// Whatever the input, ConvertLayer either refuses it or writes a layer that verifies.
func FuzzConvertLayer(f *testing.F) {
	f.Add(tarOf(f, testlayer.EveryKind()[:4], 0))
	f.Add(gzipOf(f, tarOf(f, testlayer.EveryKind()[:6], 10240)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, input []byte) {
		var out bytes.Buffer
		l, err := ConvertLayer(context.Background(), bytes.NewReader(input), &out, LayerOptions{ChunkSize: 4096})
		if err != nil {
			return
		}
		blob := out.Bytes()
		if err := VerifyLayer(context.Background(), io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), Expected{
			OriginalDiffID: l.OriginalDiffID, OriginalSize: l.OriginalSize, TOCDigest: l.TOCDigest,
		}); err != nil {
			t.Fatalf("converted layer does not verify: %v", err)
		}
	})
}

// BenchmarkConvertLayer measures conversion throughput in MB/s of uncompressed layer.
func BenchmarkConvertLayer(b *testing.B) {
	var entries []testlayer.Entry
	for i := range 400 {
		size := 1 << (8 + i%12) // 256 B .. 512 KiB: a mix like a distribution's files
		body := testlayer.RandomBytes(uint64(i), size/2)
		body = append(body, bytes.Repeat([]byte("text "), size/10)...)
		entries = append(entries, testlayer.Reg(fmt.Sprintf("usr/lib/file-%04d", i), body, 0o644))
	}
	original := tarOf(b, entries, 10240)
	layer := gzipOf(b, original)
	sum := sha256.Sum256(original)
	b.Logf("layer: %d MB uncompressed, %d MB gzip, diff_id sha256:%x", len(original)>>20, len(layer)>>20, sum[:4])
	b.SetBytes(int64(len(original)))
	var size int64
	for b.Loop() {
		l, err := ConvertLayer(context.Background(), bytes.NewReader(layer), io.Discard, LayerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		size = l.Size
	}
	b.ReportMetric(float64(size)/float64(len(layer)), "size-ratio")
}

// rewriteTOC replaces the TOC of an eStargz blob with what edit makes of it, and returns the
// new blob and TOC digest: an artifact whose bytes are right and whose TOC lies.
func rewriteTOC(t *testing.T, blob []byte, edit func(*artifact.JTOC)) ([]byte, digest.Digest) {
	t.Helper()
	toc, off, _, err := artifact.ReadTOC(bytes.NewReader(blob), int64(len(blob)), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	edit(toc)
	var out bytes.Buffer
	out.Write(blob[:off])
	tocJSON, err := artifact.WriteTOCAndFooter(&out, off, toc, gzip.DefaultCompression, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), digest.FromBytes(tocJSON)
}

// rill verify checks every TOC entry's metadata against the tar header it describes: a TOC
// that serves other names, modes, owners, xattrs, links or times than the verified bytes
// hold fails, naming the entry.
func TestVerifyLayerChecksMetadataAgainstTheTar(t *testing.T) {
	blob, l := convert(t, gzipOf(t, tarOf(t, append(testlayer.EveryKind(), testlayer.RootfsQuirks()...), 0)), LayerOptions{ChunkSize: 64 << 10})
	section := func(b []byte) *io.SectionReader { return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))) }
	if err := VerifyLayer(context.Background(), section(blob), Expected{OriginalDiffID: l.OriginalDiffID, OriginalSize: l.OriginalSize, TOCDigest: l.TOCDigest}); err != nil {
		t.Fatalf("a faithful layer: %v", err)
	}
	find := func(toc *artifact.JTOC, name string) *artifact.TOCEntry {
		for _, e := range toc.Entries {
			if e.RawName() == name && e.Type != "chunk" {
				return e
			}
		}
		t.Fatalf("no entry %q", name)
		return nil
	}
	cases := []struct {
		name, entry, say string
		edit             func(e *artifact.TOCEntry)
	}{
		{"setuid added", "etc/hostname", "mode 4755", func(e *artifact.TOCEntry) { e.Mode = 0o4755 }},
		{"owner", "etc/hostname", "owner 0:0", func(e *artifact.TOCEntry) { e.UID, e.GID = 0, 0 }},
		{"xattr", "etc/with-xattrs", "extended attributes", func(e *artifact.TOCEntry) { e.Xattrs["user.rill"] = []byte("lies") }},
		{"symlink target", "etc/link", "link target", func(e *artifact.TOCEntry) { e.LinkName = "/etc/shadow" }},
		{"mtime", "times/nanoseconds", "modification time", func(e *artifact.TOCEntry) { e.RillModTime = "" }},
		{"raw name", "names/latin1-caf\xe9", "name", func(e *artifact.TOCEntry) { e.RillName = []byte("names/other") }},
		{"type", "run/fifo", "type", func(e *artifact.TOCEntry) { e.Type = "dir" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad, tocDigest := rewriteTOC(t, blob, func(toc *artifact.JTOC) { c.edit(find(toc, c.entry)) })
			err := VerifyLayer(context.Background(), section(bad), Expected{OriginalDiffID: l.OriginalDiffID, OriginalSize: l.OriginalSize, TOCDigest: tocDigest})
			if err == nil || !strings.Contains(err.Error(), c.say) || !strings.Contains(err.Error(), fmt.Sprintf("%q", c.entry)) {
				t.Fatalf("error %v, want one naming %q and saying %q", err, c.entry, c.say)
			}
		})
	}
}
