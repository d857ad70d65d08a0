// Package benchlayer gives benchmarks converted layers of realistic size (testlayer.Runtime),
// kept in the temporary directory between runs: converting the largest takes half a minute of
// CPU.
package benchlayer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/internal/testlayer"
)

// Layer is a converted layer: its tar, its eStargz blob and what the converter reported.
type Layer struct {
	Tar  []byte
	Blob []byte
	Conv convert.Layer
}

var (
	mu     sync.Mutex
	layers = map[[3]int]Layer{}
)

// Runtime returns testlayer.Runtime(seed, files, big) converted with the default options.
// Runtime(1, 30_000, 32) has about 34,000 TOC entries, the largest layer of a Debian image
// with python3, numpy and scipy.
func Runtime(seed uint64, files, big int) (Layer, error) {
	key := [3]int{int(seed), files, big}
	mu.Lock()
	defer mu.Unlock()
	if l, ok := layers[key]; ok {
		return l, nil
	}
	tarBytes, err := testlayer.Tar(testlayer.Runtime(seed, files, big), 0)
	if err != nil {
		return Layer{}, err
	}
	// v2: the generator's version; a change to testlayer.Runtime changes the tar, which the
	// cached layer's original diff_id is checked against.
	cached := filepath.Join(os.TempDir(), fmt.Sprintf("rill-bench-runtime-v2-%d-%d-%d", seed, files, big))
	l := Layer{Tar: tarBytes}
	if meta, err := os.ReadFile(cached + ".json"); err == nil {
		blob, err := os.ReadFile(cached + ".blob")
		if err == nil && json.Unmarshal(meta, &l.Conv) == nil && digest.FromBytes(blob) == l.Conv.Digest && digest.FromBytes(tarBytes) == l.Conv.OriginalDiffID {
			l.Blob = blob
			layers[key] = l
			return l, nil
		}
	}
	var blob bytes.Buffer
	if l.Conv, err = convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{}); err != nil {
		return Layer{}, err
	}
	l.Blob = blob.Bytes()
	meta, _ := json.Marshal(l.Conv)
	for name, data := range map[string][]byte{".blob": l.Blob, ".json": meta} {
		if f, err := os.CreateTemp(os.TempDir(), ".rill-bench-"); err == nil {
			_, werr := f.Write(data)
			if f.Close() != nil || werr != nil || os.Rename(f.Name(), cached+name) != nil {
				os.Remove(f.Name())
			}
		}
	}
	layers[key] = l
	return l, nil
}

// CPUTime reports the CPU time of the process per operation (cpu-ns/op) when the benchmark
// ends: on a machine shared with other work, wall time per operation says little.
func CPUTime(b *testing.B) {
	var start syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &start)
	b.Cleanup(func() {
		var end syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &end)
		ns := func(r syscall.Rusage) int64 { return r.Utime.Nano() + r.Stime.Nano() }
		b.ReportMetric(float64(ns(end)-ns(start))/float64(b.N), "cpu-ns/op")
	})
}
