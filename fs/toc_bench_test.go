package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
)

// runtimeLayer is a converted layer of about 35,000 TOC entries (testlayer.Runtime), the size
// of the largest layer of a Python image with numpy and scipy: what a Prepare loads.
// Converting it takes half a minute of CPU: it is kept in the temporary directory between runs.
var runtimeLayer = sync.OnceValues(func() ([]byte, convert.Layer) {
	cached := filepath.Join(os.TempDir(), "rill-bench-runtime-layer-v1")
	if meta, err := os.ReadFile(cached + ".json"); err == nil {
		var l convert.Layer
		blob, err := os.ReadFile(cached + ".blob")
		if err == nil && json.Unmarshal(meta, &l) == nil && digest.FromBytes(blob) == l.Digest {
			return blob, l
		}
	}
	tarBytes, err := testlayer.Tar(testlayer.Runtime(1, 30_000, 32), 0)
	if err != nil {
		panic(err)
	}
	var blob bytes.Buffer
	l, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{})
	if err != nil {
		panic(err)
	}
	meta, _ := json.Marshal(l)
	for name, data := range map[string][]byte{".blob": blob.Bytes(), ".json": meta} {
		if f, err := os.CreateTemp(os.TempDir(), ".rill-bench-"); err == nil {
			_, werr := f.Write(data)
			if f.Close() != nil || werr != nil || os.Rename(f.Name(), cached+name) != nil {
				os.Remove(f.Name())
			}
		}
	}
	return blob.Bytes(), l
})

// cpuTime reports the CPU time of the process per operation (cpu-ns/op) when the benchmark
// ends: on a machine shared with other work, wall time per operation says little.
func cpuTime(b *testing.B) {
	var start syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &start)
	b.Cleanup(func() {
		var end syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &end)
		ns := func(r syscall.Rusage) int64 { return r.Utime.Nano() + r.Stime.Nano() }
		b.ReportMetric(float64(ns(end)-ns(start))/float64(b.N), "cpu-ns/op")
	})
}

func loadRuntimeLayer(b *testing.B) ([]byte, convert.Layer, *TOC, []byte) {
	blob, l := runtimeLayer()
	toc, tocJSON, err := LoadTOCJSON(context.Background(), bytes.NewReader(blob), int64(len(blob)), l.TOCDigest, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	cpuTime(b)
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
