package fs

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
)

// countingReaderAt records how many bytes were asked of a blob, in how many reads.
type countingReaderAt struct {
	data  []byte
	mu    sync.Mutex
	asked int64
	reads int
}

func (r *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.asked += int64(len(p))
	r.reads++
	r.mu.Unlock()
	return bytes.NewReader(r.data).ReadAt(p, off)
}

// Whatever the blob — footer, gzip member, tar, JSON — LoadTOC never panics, never reads more
// of the blob than a footer and the TOC limit, and what it accepts is a TOC within the limits,
// located inside the blob, whose JSON has the digest asked for.
//
// The fuzzer cannot guess a SHA-256, so each input is loaded twice: with a digest that cannot
// match (the footer, gzip and tar parsing and the size limits before the digest check), and
// with the digest of the JSON the blob holds, when it holds one (decoding and the limits on
// entries after it), whose TOC then goes through NewIndex.
func FuzzLoadTOC(f *testing.F) {
	blob, _ := convertedBlob(f, testlayer.EveryKind())
	f.Add(blob, int64(0), uint16(0))
	f.Add(blob, int64(200), uint16(3))
	f.Add(blob[:len(blob)-10], int64(0), uint16(0))
	f.Add(blob[len(blob)-200:], int64(0), uint16(0))
	f.Add(testlayer.Gzip([]byte("not a tar")), int64(0), uint16(0))
	empty, _ := convertedBlob(f, nil)
	f.Add(empty, int64(0), uint16(0))

	ctx := context.Background()
	footerSize := int64(estargz.FooterSize)
	f.Fuzz(func(t *testing.T, blob []byte, maxTOC int64, maxEntries uint16) {
		limits := Limits{MaxTOCBytes: maxTOC, MaxEntries: int(maxEntries)}
		effective := limits.withDefaults()
		load := func(want digest.Digest) (*TOC, []byte, error) {
			r := &countingReaderAt{data: blob}
			toc, tocJSON, err := LoadTOCJSON(ctx, r, int64(len(blob)), want, limits)
			if r.asked > footerSize+effective.MaxTOCBytes {
				t.Fatalf("read %d bytes of a %d-byte blob for a TOC limited to %d bytes", r.asked, len(blob), effective.MaxTOCBytes)
			}
			return toc, tocJSON, err
		}
		if _, _, err := load(digest.FromString("no TOC has this digest")); err == nil {
			t.Fatal("accepted a TOC whose digest differs from the one asked for")
		}

		// The digest of the JSON in the blob, if the footer and TOC member parse.
		tocOffset, err := artifact.ParseFooter(blob[max(0, int64(len(blob))-footerSize):])
		if err != nil || tocOffset < 0 || tocOffset >= int64(len(blob))-footerSize {
			return
		}
		tocJSON, err := decompressTOC(blob[tocOffset:int64(len(blob))-footerSize], effective.MaxTOCBytes)
		if err != nil {
			return
		}
		want := digest.FromBytes(tocJSON)
		toc, gotJSON, err := load(want)
		if err != nil {
			if !errors.Is(err, ErrInvalidTOC) {
				t.Fatalf("a TOC refused without ErrInvalidTOC: %v", err)
			}
			return
		}
		switch {
		case digest.FromBytes(gotJSON) != want:
			t.Fatalf("returned TOC JSON with digest %s, asked for %s", digest.FromBytes(gotJSON), want)
		case int64(len(gotJSON)) > effective.MaxTOCBytes:
			t.Fatalf("accepted %d bytes of TOC JSON, limit %d", len(gotJSON), effective.MaxTOCBytes)
		case len(toc.JTOC.Entries) > effective.MaxEntries:
			t.Fatalf("accepted %d entries, limit %d", len(toc.JTOC.Entries), effective.MaxEntries)
		case toc.Offset <= 0 || toc.Offset >= toc.BlobSize || toc.BlobSize != int64(len(blob)):
			t.Fatalf("TOC at %d of a %d-byte blob (blob size %d)", toc.Offset, toc.BlobSize, len(blob))
		}
		// What loads from disk later (ParseTOC of the kept JSON) is the same TOC.
		again, err := ParseTOC(gotJSON, toc.Offset, toc.BlobSize, want, limits)
		if err != nil || len(again.JTOC.Entries) != len(toc.JTOC.Entries) {
			t.Fatalf("the kept TOC JSON does not parse again: %v", err)
		}
		_, _ = NewIndex(toc) // must not panic
	})
}

// A TOC whose footer points anywhere is refused before anything past the limit is read.
func TestLoadTOCReadsNoMoreThanTheLimit(t *testing.T) {
	blob, l := convertedBlob(t, testlayer.EveryKind())
	r := &countingReaderAt{data: blob}
	_, err := LoadTOC(context.Background(), r, int64(len(blob)), l.TOCDigest, Limits{MaxTOCBytes: 64})
	if !errors.Is(err, ErrInvalidTOC) {
		t.Fatalf("a TOC over the limit: %v", err)
	}
	if footer := int64(estargz.FooterSize); r.asked > footer {
		t.Fatalf("read %d bytes of the blob; only the %d-byte footer was needed to refuse it", r.asked, footer)
	}
}

// The TOC offset a streaming artifact annotates its layers with lets a node read the footer
// and the TOC in one request; an annotation that is absent, wrong or out of bounds costs the
// reads it costs without it (or one more), never a different TOC.
func TestLoadTOCAtTheAnnotatedOffset(t *testing.T) {
	blob, l := convertedBlob(t, testlayer.EveryKind())
	if l.TOCOffset <= 0 {
		t.Fatalf("the converter reports the TOC at %d", l.TOCOffset)
	}
	if got := artifact.TOCOffsetHint(l.Annotations(digest.FromString("original")), int64(len(blob))); got != l.TOCOffset {
		t.Fatalf("the layer's annotations give the TOC offset %d, the converter says %d", got, l.TOCOffset)
	}
	want, wantJSON, err := LoadTOCJSON(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(blob))
	cases := []struct {
		name   string
		hint   int64
		limits Limits
		reads  int
	}{
		{"right", l.TOCOffset, Limits{}, 1},
		{"absent", 0, Limits{}, 2},
		{"before the TOC", l.TOCOffset - 1000, Limits{}, 1},
		{"inside the TOC", l.TOCOffset + 10, Limits{}, 2},
		{"inside the footer", size - 20, Limits{}, 2},
		{"past the blob", size + 1000, Limits{}, 2},
		{"negative", -5, Limits{}, 2},
		{"reading more than the TOC limit", 1, Limits{MaxTOCBytes: int64(len(wantJSON))}, 2},
	}
	if size-51-1 <= int64(len(wantJSON)) {
		t.Fatal("the layer is too small for the test of a hint that reads more than the TOC limit")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &countingReaderAt{data: blob}
			toc, tocJSON, err := LoadTOCJSONAt(context.Background(), r, size, c.hint, l.TOCDigest, c.limits)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tocJSON, wantJSON) || toc.Offset != want.Offset || len(toc.JTOC.Entries) != len(want.JTOC.Entries) {
				t.Fatalf("loaded a TOC at %d with %d entries, want the footer's at %d with %d", toc.Offset, len(toc.JTOC.Entries), want.Offset, len(want.JTOC.Entries))
			}
			if r.reads != c.reads {
				t.Fatalf("%d range reads, want %d", r.reads, c.reads)
			}
		})
	}
	// Annotations that cannot be right are no hint at all.
	for _, v := range []string{"", "x", "-1", "0", strconv.FormatInt(size-51, 10), "99999999999999999999"} {
		if got := artifact.TOCOffsetHint(map[string]string{artifact.AnnotationTOCOffset: v}, size); got != 0 {
			t.Errorf("annotation %q: hint %d, want none", v, got)
		}
	}
}

// An annotation pointing at another TOC member in the blob — one the image's TOC digest
// vouches for, even — does not make the node load it: the TOC is the one the footer points
// at, checked against the digest.
func TestLoadTOCIgnoresAForgedTOCAtTheAnnotatedOffset(t *testing.T) {
	blob, l := convertedBlob(t, testlayer.EveryKind())
	forged := &artifact.JTOC{Version: 1, Entries: []*artifact.TOCEntry{{TOCEntry: estargz.TOCEntry{Name: "etc/hostname", Type: "reg", Size: 5, Offset: 1, ChunkDigest: digest.FromString("evil\n").String()}}}}
	var member bytes.Buffer
	forgedJSON, err := artifact.WriteTOCAndFooter(&member, 0, forged, 6, nil)
	if err != nil {
		t.Fatal(err)
	}
	forgedMember := member.Bytes()[:member.Len()-estargz.FooterSize]
	// data | forged TOC member | the layer's TOC member | footer pointing at the layer's
	realOffset := l.TOCOffset + int64(len(forgedMember))
	var b bytes.Buffer
	b.Write(blob[:l.TOCOffset])
	b.Write(forgedMember)
	b.Write(blob[l.TOCOffset : len(blob)-estargz.FooterSize])
	b.Write(artifact.FooterBytes(realOffset))
	tampered := b.Bytes()

	toc, _, err := LoadTOCJSONAt(context.Background(), bytes.NewReader(tampered), int64(len(tampered)), l.TOCOffset, l.TOCDigest, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if toc.Offset != realOffset || len(toc.JTOC.Entries) == 1 {
		t.Fatalf("loaded the TOC at %d with %d entries, want the footer's at %d", toc.Offset, len(toc.JTOC.Entries), realOffset)
	}
	if _, _, err := LoadTOCJSONAt(context.Background(), bytes.NewReader(tampered), int64(len(tampered)), l.TOCOffset, digest.FromBytes(forgedJSON), Limits{}); !errors.Is(err, ErrInvalidTOC) {
		t.Fatalf("the forged TOC's digest: %v, want the footer's TOC refused", err)
	}
}

// Whatever the blob and the hint, LoadTOCJSONAt loads what LoadTOCJSON loads, and reads no
// more than the footer and twice the TOC limit.
func FuzzLoadTOCAt(f *testing.F) {
	blob, l := convertedBlob(f, testlayer.EveryKind())
	for _, hint := range []int64{0, l.TOCOffset, l.TOCOffset - 7, l.TOCOffset + 7, int64(len(blob)) - 3, -1} {
		f.Add(blob, hint, int64(0))
	}
	f.Add(blob, l.TOCOffset, int64(100))
	f.Add(blob[len(blob)-300:], int64(3), int64(0))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, blob []byte, hint, maxTOC int64) {
		limits := Limits{MaxTOCBytes: maxTOC}
		size := int64(len(blob))
		// The digest of the JSON in the blob, if the footer and TOC member parse.
		want := digest.FromString("no TOC has this digest")
		if off, err := artifact.ParseFooter(blob[max(0, size-51):]); err == nil && off >= 0 && off < size-51 {
			if tocJSON, err := decompressTOC(blob[off:size-51], limits.withDefaults().MaxTOCBytes); err == nil {
				want = digest.FromBytes(tocJSON)
			}
		}
		toc, tocJSON, err := LoadTOCJSON(ctx, bytes.NewReader(blob), size, want, limits)
		r := &countingReaderAt{data: blob}
		hinted, hintedJSON, hintedErr := LoadTOCJSONAt(ctx, r, size, hint, want, limits)
		if (err == nil) != (hintedErr == nil) {
			t.Fatalf("without the hint: %v; with hint %d: %v", err, hint, hintedErr)
		}
		if err == nil && (!bytes.Equal(tocJSON, hintedJSON) || toc.Offset != hinted.Offset || toc.BlobSize != hinted.BlobSize) {
			t.Fatalf("hint %d loaded a TOC at %d, without it at %d", hint, hinted.Offset, toc.Offset)
		}
		if max := 51 + 2*limits.withDefaults().MaxTOCBytes; r.asked > max {
			t.Fatalf("read %d bytes, more than %d", r.asked, max)
		}
	})
}
