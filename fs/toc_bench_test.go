package fs

import (
	"bytes"
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/benchlayer"
)

// runtimeLayer is a converted layer of about 34,000 TOC entries, the size of the largest layer
// of a Python image with numpy and scipy: what a Prepare loads.
func runtimeLayer() ([]byte, convert.Layer) {
	l, err := benchlayer.Runtime(1, 30_000, 32)
	if err != nil {
		panic(err)
	}
	return l.Blob, l.Conv
}

func loadRuntimeLayer(b *testing.B) ([]byte, convert.Layer, *TOC, []byte) {
	blob, l := runtimeLayer()
	toc, tocJSON, err := LoadTOCJSON(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	benchlayer.CPUTime(b)
	return blob, l, toc, tocJSON
}

// The work of a Prepare on one layer, step by step: LoadTOC (footer, TOC member, gunzip, tar,
// digest, JSON), then NewIndex.
//
//	go test ./fs/ -run '^$' -bench 'TOC|Index' -benchmem
func BenchmarkLoadTOC(b *testing.B) {
	blob, l, toc, tocJSON := loadRuntimeLayer(b)
	for b.Loop() {
		if _, _, err := LoadTOCJSON(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(toc.JTOC.Entries)), "entries")
	b.ReportMetric(float64(len(tocJSON)), "json-bytes")
	b.ReportMetric(float64(int64(len(blob))-toc.Offset), "compressed-bytes")
}

func BenchmarkDecompressTOC(b *testing.B) {
	blob, _, toc, _ := loadRuntimeLayer(b)
	compressed := blob[toc.Offset : int64(len(blob))-51]
	for b.Loop() {
		if _, err := decompressTOC(compressed, defaultMaxTOCBytes); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseTOC(b *testing.B) {
	blob, l, toc, tocJSON := loadRuntimeLayer(b)
	for b.Loop() {
		if _, err := ParseTOC(tocJSON, toc.Offset, int64(len(blob)), l.TOCDigest, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTOCDigest(b *testing.B) {
	_, _, _, tocJSON := loadRuntimeLayer(b)
	for b.Loop() {
		digest.FromBytes(tocJSON)
	}
}

func BenchmarkNewIndex(b *testing.B) {
	_, _, toc, _ := loadRuntimeLayer(b)
	for b.Loop() {
		if _, err := NewIndex(toc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadTOCAndIndex(b *testing.B) {
	blob, l, _, _ := loadRuntimeLayer(b)
	for b.Loop() {
		toc, err := LoadTOC(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := NewIndex(toc); err != nil {
			b.Fatal(err)
		}
	}
}
