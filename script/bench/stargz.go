package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/test/harness"
)

// The stargz modes measure stargz-snapshotter (v0.18.2, the version script/bench/stargz/go.mod
// names) beside rill, on the same link and in the same run:
//
//	stargz      the workload converted to eStargz as stargz-snapshotter's tools do it
//	            (estargz.Build: entries re-encoded, gzip level 9, no prioritized files, so
//	            the no-prefetch landmark): lazy pulling without optimization
//	stargz-opt  the same with the files the workload opens at start as prioritized files
//	            (estargz.WithPrioritizedFiles: those files first, then the prefetch
//	            landmark), what `ctr-remote image optimize` makes: stargz-snapshotter
//	            prefetches everything up to the landmark when it mounts the layer
//
// The daemon is stargz-grpc (script/bench/stargz, its own Go module: rill's go.mod does not
// gain stargz-snapshotter's dependencies), built with `go build` into the cache directory.
const (
	stargzName      = "stargz"  // its proxy plugin in containerd
	stargzVersion   = "v0.18.2" // what script/bench/stargz/go.mod requires
	stargzModuleDir = "script/bench/stargz"
	// stargzSilence is how long stargz-snapshotter waits without on-demand reads before its
	// background fetch runs (its task manager's silence period), plus a margin.
	stargzSilence = 7 * time.Second
)

// isStargz reports whether mode runs stargz-snapshotter.
func isStargz(mode string) bool { return mode == modeStargz || mode == modeStargzOpt }

// buildStargzDaemon builds stargz-grpc from script/bench/stargz into dir and returns its path.
// The first build downloads stargz-snapshotter's modules and compiles them (a minute or two on
// two cores); later ones come from Go's build cache.
func buildStargzDaemon(ctx context.Context, repoRoot, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "stargz-grpc")
	if err := harness.BuildGo(ctx, filepath.Join(repoRoot, stargzModuleDir), ".", bin, false); err != nil {
		return "", fmt.Errorf("building stargz-snapshotter's daemon (%s): %w", stargzModuleDir, err)
	}
	return bin, nil
}

// stargzPeer runs the stargz-grpc binary bin as a peer snapshotter: a fresh root for each run.
func stargzPeer(bin string) *peerConfig {
	return &peerConfig{
		name:   stargzName,
		bin:    bin,
		args:   []string{"-root", "{root}", "-address", "{socket}", "-log-level", "info"},
		socket: "{root}/stargz.sock",
	}
}

// prepareStargz converts w to eStargz as stargz-snapshotter's tools do (with prioritized
// files when given: the optimized image), pushes it and returns the reference a node pulls.
func (bn *bench) prepareStargz(ctx context.Context, w *workload, mode string, prioritized []string) (string, error) {
	repo := "bench/" + w.name + "-" + mode + ":stargz"
	var layers []*harness.Layer
	var missed []string
	for i, l := range w.layers {
		el, miss, err := estargzLayer(ctx, filepath.Join(bn.cfg.cacheDir, "estargz"), l, prioritized, bn.logf)
		if err != nil {
			return "", fmt.Errorf("converting layer %d of %s to eStargz: %w", i, w.name, err)
		}
		layers = append(layers, el)
		missed = append(missed, miss...)
	}
	var size int64
	for _, l := range layers {
		size += l.Size
	}
	if len(prioritized) > 0 {
		// A path in the profile is in one layer (or none: a file the start created).
		bn.logf("%s: %s prioritizes %d paths of the profile (%d found in no layer)", w.name, mode,
			len(prioritized), countMissing(prioritized, missed, len(w.layers)))
	}
	began := time.Now()
	if _, err := harness.Push(ctx, bn.registry.Host()+"/"+repo, harness.ImageSpec{Layers: layers, Config: w.config}); err != nil {
		return "", err
	}
	bn.logf("pushed %s (eStargz for stargz-snapshotter, %s) in %s", repo, mb(size), time.Since(began).Round(time.Millisecond))
	return bn.link.Addr() + "/" + repo, nil
}

// countMissing counts the prioritized paths that every one of n layers missed.
func countMissing(prioritized, missed []string, n int) int {
	count := map[string]int{}
	for _, p := range missed {
		count[p]++
	}
	k := 0
	for _, p := range prioritized {
		if count[p] >= n {
			k++
		}
	}
	return k
}

// estargzLayer returns layer l converted by estargz.Build (with prioritized files if any),
// cached under dir by the source layer's digest and the prioritized list, and the prioritized
// paths the layer does not hold.
func estargzLayer(ctx context.Context, dir string, l *harness.Layer, prioritized []string, logf func(string, ...any)) (*harness.Layer, []string, error) {
	variant := "plain"
	if len(prioritized) > 0 {
		h := sha256.Sum256([]byte(strings.Join(prioritized, "\n")))
		variant = "opt-" + hex.EncodeToString(h[:8])
	}
	key := l.Digest.Hex[:16] + "-" + variant
	tarPath, jsonPath, missPath := filepath.Join(dir, key+".tar.gz"), filepath.Join(dir, key+".json"), filepath.Join(dir, key+".missed")
	if cached, err := harness.LoadLayer(jsonPath, tarPath); err == nil {
		var missed []string
		if data, err := os.ReadFile(missPath); err == nil && len(data) > 0 {
			missed = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		}
		return cached, missed, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	began := time.Now()
	logf("converting layer %s to eStargz (%s) with estargz.Build", l.Digest.Hex[:12], variant)
	// Build wants the uncompressed tar as a SectionReader: unpack the gzip layer to a file.
	raw, err := os.CreateTemp(dir, "tar-")
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		raw.Close()
		os.Remove(raw.Name())
	}()
	r, err := l.Uncompressed()
	if err != nil {
		return nil, nil, err
	}
	n, err := io.Copy(raw, r)
	r.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("unpacking %s: %w", l.Path, err)
	}
	opts := []estargz.Option{estargz.WithContext(ctx)}
	var missed []string
	if len(prioritized) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized), estargz.WithAllowPrioritizeNotFound(&missed))
	}
	blob, err := estargz.Build(io.NewSectionReader(raw, 0, n), opts...)
	if err != nil {
		return nil, nil, err
	}
	defer blob.Close()
	tmp := tarPath + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return nil, nil, err
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(out, h), blob)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return nil, nil, err
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, nil, err
	}
	el := &harness.Layer{
		Path:   tarPath,
		Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))},
		DiffID: v1.Hash{Algorithm: "sha256", Hex: blob.DiffID().Encoded()},
		Size:   size,
		Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: fmt.Sprint(usize),
		},
	}
	if err := os.Rename(tmp, tarPath); err != nil {
		return nil, nil, err
	}
	if len(missed) > 0 {
		if err := os.WriteFile(missPath, []byte(strings.Join(missed, "\n")+"\n"), 0o644); err != nil {
			return nil, nil, err
		}
	}
	if err := el.SaveJSON(jsonPath); err != nil { // last: the cache entry is complete
		return nil, nil, err
	}
	logf("  eStargz layer %s: %s (from %s) in %s", el.Digest.Hex[:12], mb(size), mb(l.Size), time.Since(began).Round(time.Second))
	return el, missed, nil
}
