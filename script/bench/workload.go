package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/test/harness"
)

// workload is an image whose container prints "ready" once it has read what it needs at start.
type workload struct {
	name    string
	layers  []*harness.Layer // bottom first
	config  v1.Config
	command []string
	// startBytes is what the container reads at start (its regular files opened, whole, except
	// where the workload knows it reads only parts: the big file): the numerator of the
	// physical limit.
	startBytes int64
	// imageBytes is the sum of the layers' uncompressed sizes; compressed is their size in the
	// registry.
	imageBytes, compressed int64
	// profile lists the paths the container opens at start, in first-access order, for
	// `rill create --prefetch-profile` (recorded by strace, or known by construction).
	profile []string
	// profileSource says where profile comes from, for the output.
	profileSource string
	// fleetSource says how the fleet mode's profile was learnt, for the output.
	fleetSource string
	// stargzSource says which profile gave stargz-opt its prioritized files, for the output.
	stargzSource string
	// profileGiven is true when --profile gave the profile; otherwise the rill-profile mode
	// records one with rill first.
	profileGiven bool
}

// readyLine is what every workload prints when it is ready.
const readyLine = "ready"

// workloadNames are the workloads the benchmark knows, in the order it runs them.
func workloadNames() []string { return []string{"python", "bigfile", "smallfiles"} }

// sizes are the workload sizes: the issue's, or small ones for --quick.
type sizes struct {
	bigFile         int64 // bytes of the big file
	bigReads        int64 // scattered reads of it at start
	bigReadSize     int64
	smallFiles      int // number of small files
	smallEvery      int // the app reads every n-th of them
	smallMaxSize    int // files are 1..smallMaxSize bytes
	pythonPackages  []string
	pythonStartCode string
}

func fullSizes() sizes {
	return sizes{
		bigFile: 2 << 30, bigReads: 64, bigReadSize: 64 << 10,
		smallFiles: 50_000, smallEvery: 50, smallMaxSize: 8 << 10,
	}
}

func quickSizes() sizes {
	return sizes{
		bigFile: 64 << 20, bigReads: 16, bigReadSize: 64 << 10,
		smallFiles: 2_000, smallEvery: 50, smallMaxSize: 8 << 10,
	}
}

// buildWorkload returns the named workload, building (and caching) its layers first.
func buildWorkload(ctx context.Context, b *builder, name string) (*workload, error) {
	switch name {
	case "bigfile":
		return b.bigfile(ctx)
	case "smallfiles":
		return b.smallfiles(ctx)
	case "python":
		return b.python(ctx)
	}
	return nil, fmt.Errorf("unknown workload %q (known: %s)", name, strings.Join(workloadNames(), ", "))
}

// builder builds workloads into a cache directory.
type builder struct {
	repoRoot string
	cacheDir string
	sizes    sizes
	logf     func(format string, args ...any)
}

// cached returns the layers saved under dir by save, or false when dir holds none.
func cachedLayers(dir string, n int) ([]*harness.Layer, bool) {
	var layers []*harness.Layer
	for i := range n {
		l, err := harness.LoadLayer(filepath.Join(dir, fmt.Sprintf("layer-%d.json", i)), filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i)))
		if err != nil {
			return nil, false
		}
		layers = append(layers, l)
	}
	return layers, true
}

// layerPath is where layer i of a workload cached in dir lives.
func layerPath(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i))
}

// saveLayers records the layers' digests beside them (the cache is complete once they exist).
func saveLayers(dir string, layers []*harness.Layer) error {
	for i, l := range layers {
		if err := l.SaveJSON(filepath.Join(dir, fmt.Sprintf("layer-%d.json", i))); err != nil {
			return err
		}
	}
	return nil
}

// appLayer builds the workload app (a static binary) and returns a layer holding it as /app.
func (b *builder) appLayer(ctx context.Context, dir string) (*harness.Layer, error) {
	bin := filepath.Join(dir, "app")
	if err := harness.BuildGo(ctx, b.repoRoot, "./script/bench/app", bin, true); err != nil {
		return nil, fmt.Errorf("building the workload app: %w", err)
	}
	defer os.Remove(bin)
	return harness.SingleFileLayer(layerPath(dir, 0), bin, "app")
}

func uncompressedSize(layers []*harness.Layer) (int64, int64, error) {
	var total, compressed int64
	for _, l := range layers {
		r, err := l.Uncompressed()
		if err != nil {
			return 0, 0, err
		}
		n, err := countBytes(r)
		r.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("reading layer %s: %w", l.Path, err)
		}
		total += n
		compressed += l.Size
	}
	return total, compressed, nil
}
