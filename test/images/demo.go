package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/rillstream/rill/test/harness"
)

// DemoCacheKey names the cached layers of the demo image; change it to rebuild them.
const DemoCacheKey = "demo-python-bookworm-v1"

// Sizes of the demo's data file and of the records its work reads.
const (
	demoDataSize   = 256 << 20
	demoRecords    = 32
	demoRecordSize = 64 << 10
)

// demoWork is the container's work: start python, read records spread over the data file,
// and print their digest.
const demoWork = `import hashlib, json, os
size = os.path.getsize("/data/records.bin")
h = hashlib.sha256()
with open("/data/records.bin", "rb") as f:
    for i in range(%d):
        f.seek(i * (size // %d))
        h.update(f.read(%d))
print(json.dumps({"records": %d, "sha256": h.hexdigest()}))
`

// DemoPython returns the demo image: a Debian bookworm root file system with python3 (one
// layer, debootstrap and apt-get once, cached) and an application layer with a script and a
// 256 MiB data file of random bytes. Its command reads 32 records of 64 KiB spread over the
// file and prints their digest: a start that needs a few percent of the image.
func DemoPython(ctx context.Context, cacheDir string, logf func(format string, args ...any)) (*TestImage, error) {
	final := filepath.Join(cacheDir, DemoCacheKey)
	layers, err := loadDemoLayers(final)
	if err != nil {
		if layers, err = buildDemoLayers(ctx, cacheDir, final, logf); err != nil {
			return nil, err
		}
	}
	want, err := demoDigest()
	if err != nil {
		return nil, err
	}
	return &TestImage{
		Repository: "rill/demo-python:v1",
		Spec: harness.ImageSpec{
			Layers: layers,
			Config: v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: []string{"/usr/bin/python3", "/app/work.py"}},
		},
		Command: []string{"/usr/bin/python3", "/app/work.py"},
		Want:    fmt.Sprintf("{\"records\": %d, \"sha256\": \"%s\"}\n", demoRecords, want),
	}, nil
}

func loadDemoLayers(dir string) ([]*harness.Layer, error) {
	var out []*harness.Layer
	for _, name := range []string{"python", "app"} {
		l, err := harness.LoadLayer(filepath.Join(dir, name+".json"), filepath.Join(dir, name+".tar.gz"))
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func buildDemoLayers(ctx context.Context, cacheDir, final string, logf func(string, ...any)) ([]*harness.Layer, error) {
	if _, err := harness.LookTool("debootstrap"); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(final) // damaged or incomplete
	tmp, err := os.MkdirTemp(cacheDir, ".build-"+DemoCacheKey+"-")
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = harness.UnmountAll(tmp)
		_ = os.RemoveAll(tmp)
	}()
	began := time.Now()
	logf("building the demo image once (debootstrap, apt-get install python3; cached in %s)", final)
	rootfs := filepath.Join(tmp, "rootfs")
	if err := debootstrap(ctx, rootfs, filepath.Join(tmp, "debootstrap.log")); err != nil {
		return nil, err
	}
	if err := installPython3(ctx, rootfs, filepath.Join(tmp, "apt.log")); err != nil {
		return nil, err
	}
	out := filepath.Join(tmp, "layers")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, err
	}
	python, err := RootfsLayer(rootfs, filepath.Join(out, "python.tar.gz"))
	if err != nil {
		return nil, fmt.Errorf("the python layer: %w", err)
	}
	app := filepath.Join(tmp, "app")
	if err := writeDemoApp(app); err != nil {
		return nil, err
	}
	appLayer, err := RootfsLayer(app, filepath.Join(out, "app.tar.gz"))
	if err != nil {
		return nil, fmt.Errorf("the app layer: %w", err)
	}
	if err := errors.Join(python.SaveJSON(filepath.Join(out, "python.json")), appLayer.SaveJSON(filepath.Join(out, "app.json"))); err != nil {
		return nil, err
	}
	if err := os.Rename(out, final); err != nil {
		if _, statErr := os.Stat(final); statErr != nil {
			return nil, fmt.Errorf("moving the demo layers into the cache: %w", err)
		}
	}
	logf("demo image built in %s", time.Since(began).Round(time.Second))
	return loadDemoLayers(final)
}

// installPython3 installs python3 into rootfs with apt-get in a chroot (Debian's mirror).
func installPython3(ctx context.Context, rootfs, logPath string) error {
	if err := harness.UnmountAll(rootfs); err != nil {
		return err
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/resolv.conf"), resolv, 0o644); err != nil {
		return err
	}
	if err := syscall.Mount("proc", filepath.Join(rootfs, "proc"), "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting proc in the chroot: %w", err)
	}
	defer func() { _ = harness.UnmountAll(rootfs) }()
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	for _, args := range [][]string{
		{rootfs, "apt-get", "update"},
		{rootfs, "apt-get", "install", "-y", "--no-install-recommends", "python3"},
		{rootfs, "apt-get", "clean"},
	} {
		cmd := exec.CommandContext(ctx, "chroot", args...)
		cmd.Env = []string{"DEBIAN_FRONTEND=noninteractive", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
		cmd.Stdout, cmd.Stderr = log, log
		cmd.WaitDelay = 10 * time.Second
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("chroot %v (needs %s reachable; log %s): %w", args[1:], debianMirror, logPath, err)
		}
	}
	if err := harness.UnmountAll(rootfs); err != nil {
		return err
	}
	return errors.Join(os.RemoveAll(filepath.Join(rootfs, "var/lib/apt/lists")), os.WriteFile(filepath.Join(rootfs, "etc/resolv.conf"), nil, 0o644))
}

// demoData is the data file's content: deterministic, incompressible.
func demoData() io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'r', 'i', 'l', 'l'}), demoDataSize)
}

func writeDemoApp(dir string) error {
	for _, d := range []string{"app", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	script := fmt.Sprintf(demoWork, demoRecords, demoRecords, demoRecordSize, demoRecords)
	if err := os.WriteFile(filepath.Join(dir, "app/work.py"), []byte(script), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "data/records.bin"))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, demoData()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// demoDigest is what the demo's work prints: the digest of the records it reads.
func demoDigest() (string, error) {
	data, err := io.ReadAll(demoData())
	if err != nil {
		return "", err
	}
	h := sha256.New()
	step := len(data) / demoRecords
	for i := range demoRecords {
		h.Write(data[i*step : i*step+demoRecordSize])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
