package fs

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/internal/testlayer"
)

// countingReaderAt records how many bytes were asked of a blob.
type countingReaderAt struct {
	data  []byte
	mu    sync.Mutex
	asked int64
}

func (r *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.asked += int64(len(p))
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
