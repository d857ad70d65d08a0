package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/test/harness"
)

// DebianCacheKey names the cached debian layer; change it to rebuild the layer everywhere.
const DebianCacheKey = "debian-bookworm-minbase-v1"

// DefaultCacheDir is where built layers that take long to make (debootstrap) are kept between
// runs.
const DefaultCacheDir = "/var/cache/rill-test"

// debianMirror is the only network debootstrap needs.
const debianMirror = "http://deb.debian.org/debian"

// Debian returns the debian image: one layer with a bookworm minbase root file system, made
// with debootstrap once and cached in cacheDir (under DebianCacheKey). In the container it
// checks every installed package's files against their md5sums and prints "debian-ok".
func Debian(ctx context.Context, cacheDir string, logf func(format string, args ...any)) (*TestImage, error) {
	layer, err := cachedDebianLayer(ctx, cacheDir, logf)
	if err != nil {
		return nil, err
	}
	return &TestImage{
		Repository: "rill/debian:bookworm",
		Spec: harness.ImageSpec{
			Layers: []*harness.Layer{layer},
			Config: v1.Config{
				Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
				Cmd: []string{"/bin/bash"},
			},
		},
		Command: []string{"/bin/sh", "-c", "cd / && cat /var/lib/dpkg/info/*.md5sums | md5sum -c --quiet && echo debian-ok"},
		Want:    "debian-ok\n",
	}, nil
}

// cachedDebianLayer returns the cached layer, building it first when the cache lacks it.
func cachedDebianLayer(ctx context.Context, cacheDir string, logf func(string, ...any)) (*harness.Layer, error) {
	final := filepath.Join(cacheDir, DebianCacheKey)
	l, err := harness.LoadLayer(filepath.Join(final, "layer.json"), filepath.Join(final, "layer.tar.gz"))
	if err == nil {
		return l, nil
	}
	if _, statErr := os.Stat(final); statErr == nil {
		// Damaged (or from an older layout): build it again.
		logf("the cached debian layer is unusable (%v); rebuilding it", err)
		if err := os.RemoveAll(final); err != nil {
			return nil, fmt.Errorf("removing the unusable cached layer %s: %w", final, err)
		}
	}
	if _, err := harness.LookTool("debootstrap"); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the cache directory: %w", err)
	}
	// Build beside the final place and rename it there at once: a concurrent or interrupted
	// build never leaves a half-written layer under the final name.
	tmp, err := os.MkdirTemp(cacheDir, ".build-"+DebianCacheKey+"-")
	if err != nil {
		return nil, fmt.Errorf("creating a build directory in the cache: %w", err)
	}
	defer func() {
		_ = harness.UnmountAll(tmp) // debootstrap mounts /proc and /sys in the target
		_ = os.RemoveAll(tmp)
	}()
	began := time.Now()
	logf("building the debian layer with debootstrap (cached in %s afterwards)", final)
	rootfs := filepath.Join(tmp, "rootfs")
	if err := debootstrap(ctx, rootfs, filepath.Join(tmp, "debootstrap.log")); err != nil {
		return nil, err
	}
	if err := harness.UnmountAll(rootfs); err != nil {
		return nil, fmt.Errorf("after debootstrap: %w", err)
	}
	out := filepath.Join(tmp, "layer")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", out, err)
	}
	layer, err := RootfsLayer(rootfs, filepath.Join(out, "layer.tar.gz"))
	if err != nil {
		return nil, fmt.Errorf("making a layer of the debian root file system: %w", err)
	}
	if err := layer.SaveJSON(filepath.Join(out, "layer.json")); err != nil {
		return nil, err
	}
	if err := os.Rename(out, final); err != nil && !errors.Is(err, os.ErrExist) {
		// ErrExist (ENOTEMPTY): another run finished first; its layer is as good as ours.
		if _, statErr := os.Stat(final); statErr != nil {
			return nil, fmt.Errorf("moving the debian layer into the cache: %w", err)
		}
	}
	logf("debian layer built in %s", time.Since(began).Round(time.Second))
	return harness.LoadLayer(filepath.Join(final, "layer.json"), filepath.Join(final, "layer.tar.gz"))
}

func debootstrap(ctx context.Context, rootfs, logPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	bin, err := harness.LookTool("debootstrap")
	if err != nil {
		return err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("creating the debootstrap log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, bin, "--variant=minbase", "bookworm", rootfs, debianMirror)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		data, _ := os.ReadFile(logPath)
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		return fmt.Errorf("debootstrap --variant=minbase bookworm (needs %s reachable): %w\n%s", debianMirror, err, data)
	}
	return nil
}
