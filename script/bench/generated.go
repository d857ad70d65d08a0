package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/test/harness"
)

// meta is what a cached workload records beside its layers.
type meta struct {
	ImageBytes    int64    `json:"imageBytes"`
	Compressed    int64    `json:"compressed"`
	StartBytes    int64    `json:"startBytes"`
	Profile       []string `json:"profile"`
	ProfileSource string   `json:"profileSource"`
}

// cachedWorkload loads the workload cached in dir (layers and meta), or builds it there with
// build, which writes the layers and returns the meta.
func (b *builder) cachedWorkload(ctx context.Context, name, key string, nLayers int,
	build func(ctx context.Context, dir string) ([]*harness.Layer, *meta, error)) ([]*harness.Layer, *meta, error) {
	dir := filepath.Join(b.cacheDir, key)
	if layers, ok := cachedLayers(dir, nLayers); ok {
		var m meta
		data, err := os.ReadFile(filepath.Join(dir, "meta.json"))
		if err == nil && json.Unmarshal(data, &m) == nil {
			b.logf("workload %s: cached in %s", name, dir)
			return layers, &m, nil
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, nil, fmt.Errorf("removing the incomplete cache %s: %w", dir, err)
	}
	tmp := dir + ".build"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, nil, fmt.Errorf("creating %s: %w", tmp, err)
	}
	began := time.Now()
	b.logf("workload %s: building it (cached in %s afterwards)", name, dir)
	layers, m, err := build(ctx, tmp)
	if err != nil {
		_ = harness.UnmountAll(tmp)
		_ = os.RemoveAll(tmp)
		return nil, nil, fmt.Errorf("building workload %s: %w", name, err)
	}
	if m.ImageBytes, m.Compressed, err = uncompressedSize(layers); err != nil {
		return nil, nil, err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	if err := errors.Join(saveLayers(tmp, layers), os.WriteFile(filepath.Join(tmp, "meta.json"), data, 0o644)); err != nil {
		return nil, nil, fmt.Errorf("saving workload %s: %w", name, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, nil, fmt.Errorf("moving workload %s into the cache: %w", name, err)
	}
	b.logf("workload %s: built in %s", name, time.Since(began).Round(time.Second))
	layers, ok := cachedLayers(dir, nLayers)
	if !ok {
		return nil, nil, fmt.Errorf("workload %s: the cache %s is unreadable right after building it", name, dir)
	}
	return layers, m, nil
}

func (b *builder) finish(name string, layers []*harness.Layer, m *meta, command []string) *workload {
	return &workload{
		name: name, layers: layers, command: command,
		config:     v1.Config{Cmd: command, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		startBytes: m.StartBytes, imageBytes: m.ImageBytes, compressed: m.Compressed,
		profile: m.Profile, profileSource: m.ProfileSource,
	}
}

// bigfile is one large file of pseudo-random bytes (incompressible, like model weights or a
// database) of which the app reads a few MB at scattered offsets.
func (b *builder) bigfile(ctx context.Context) (*workload, error) {
	s := b.sizes
	key := fmt.Sprintf("bigfile-%d-v1", s.bigFile)
	command := []string{"/app", "bigfile", "/data/big.bin", fmt.Sprint(s.bigReads), fmt.Sprint(s.bigReadSize)}
	layers, m, err := b.cachedWorkload(ctx, "bigfile", key, 2, func(ctx context.Context, dir string) ([]*harness.Layer, *meta, error) {
		app, err := b.appLayer(ctx, dir)
		if err != nil {
			return nil, nil, err
		}
		w, err := harness.NewLayerWriter(layerPath(dir, 1), gzip.BestSpeed)
		if err != nil {
			return nil, nil, err
		}
		var seed [32]byte
		copy(seed[:], "rill bench: bigfile")
		if err := errors.Join(
			w.Add(dirHeader("data"), nil),
			w.Add(fileHeader("data/big.bin", s.bigFile), io.LimitReader(rand.NewChaCha8(seed), s.bigFile)),
		); err != nil {
			_, _ = w.Close()
			return nil, nil, err
		}
		data, err := w.Close()
		if err != nil {
			return nil, nil, err
		}
		return []*harness.Layer{app, data}, &meta{
			StartBytes:    appSize(app) + s.bigReads*s.bigReadSize,
			Profile:       []string{"/app", "/data/big.bin"},
			ProfileSource: "known by construction: the app and the file it opens",
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return b.finish("bigfile", layers, m, command), nil
}

// smallfiles is many small files (500 directories of 100) of which the app reads 2 %, spread
// over the whole layer.
func (b *builder) smallfiles(ctx context.Context) (*workload, error) {
	s := b.sizes
	key := fmt.Sprintf("smallfiles-%d-%d-v1", s.smallFiles, s.smallMaxSize)
	command := []string{"/app", "smallfiles", "/data", fmt.Sprint(s.smallEvery)}
	layers, m, err := b.cachedWorkload(ctx, "smallfiles", key, 2, func(ctx context.Context, dir string) ([]*harness.Layer, *meta, error) {
		app, err := b.appLayer(ctx, dir)
		if err != nil {
			return nil, nil, err
		}
		w, err := harness.NewLayerWriter(layerPath(dir, 1), gzip.DefaultCompression)
		if err != nil {
			return nil, nil, err
		}
		rng := rand.New(rand.NewPCG(7, 11))
		var seed [32]byte
		copy(seed[:], "rill bench: smallfiles")
		content := rand.NewChaCha8(seed)
		m := &meta{StartBytes: appSize(app), Profile: []string{"/app"},
			ProfileSource: "known by construction: the app and the files it opens"}
		const perDir = 100
		var errs []error
		errs = append(errs, w.Add(dirHeader("data"), nil))
		for i := range s.smallFiles {
			if i%perDir == 0 {
				errs = append(errs, w.Add(dirHeader(fmt.Sprintf("data/d%03d", i/perDir)), nil))
			}
			name := fmt.Sprintf("data/d%03d/f%05d", i/perDir, i)
			size := int64(1 + rng.IntN(s.smallMaxSize))
			errs = append(errs, w.Add(fileHeader(name, size), io.LimitReader(content, size)))
			if i%s.smallEvery == 0 { // as the app picks them: every n-th in name order
				m.StartBytes += size
				m.Profile = append(m.Profile, "/"+name)
			}
		}
		if err := errors.Join(errs...); err != nil {
			_, _ = w.Close()
			return nil, nil, err
		}
		data, err := w.Close()
		if err != nil {
			return nil, nil, err
		}
		return []*harness.Layer{app, data}, m, nil
	})
	if err != nil {
		return nil, err
	}
	return b.finish("smallfiles", layers, m, command), nil
}

func appSize(l *harness.Layer) int64 {
	r, err := l.Uncompressed()
	if err != nil {
		return 0
	}
	defer r.Close()
	tr := tar.NewReader(r)
	if hdr, err := tr.Next(); err == nil {
		return hdr.Size
	}
	return 0
}

func dirHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
}

func fileHeader(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
}

func countBytes(r io.Reader) (int64, error) { return io.Copy(io.Discard, r) }
