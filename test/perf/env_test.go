package perf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/convert"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/link"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/internal/testlayer"
	"github.com/rillstream/rill/remote"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// linkConfig is the link issue #5 sets the targets for: 100 Mbit/s shared by all connections,
// 20 ms round trip.
var linkConfig = link.Config{BitsPerSecond: 100e6, RTT: 20 * time.Millisecond}

// linkBytesPerSec is the link's rate in bytes per second.
var linkBytesPerSec = linkConfig.BitsPerSecond / 8

// env is a registry on loopback reached through the emulated link, and rill's registry access
// as the daemon has it (one Registry for every layer).
type env struct {
	backend string // the registry's host:port, reached directly (pushes)
	link    *link.Link
	reg     *remote.Registry
}

// newEnv starts the distribution registry and a link in front of it; the benchmark's cleanup
// stops both.
func newEnv(b *testing.B) *env {
	b.Helper()
	requireRoot(b)
	backend := regtest.Distribution(b, "")
	l, err := link.Start(backend, linkConfig)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	reg, err := remote.New(remote.WithHostsDir(b.TempDir()), remote.WithCredentials(remote.Anonymous()))
	if err != nil {
		b.Fatal(err)
	}
	return &env{backend: backend, link: l, reg: reg}
}

func requireRoot(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("mounts FUSE and overlayfs: run as root")
	}
}

// layer is a converted layer pushed to the registry.
type layer struct {
	repo string
	desc ocispec.Descriptor
	toc  digest.Digest
	tar  []byte // the original tar, for extraction (nil when not kept)
}

// pushLayer converts entries to a rill layer of chunkSize chunks (0: rill create's default)
// and pushes it to repo. keepTar keeps the tar for extract.
func (e *env) pushLayer(b *testing.B, repo string, entries []testlayer.Entry, chunkSize int, keepTar bool) *layer {
	b.Helper()
	tarBytes, err := testlayer.Tar(entries, 0)
	if err != nil {
		b.Fatal(err)
	}
	return e.pushTar(b, repo, tarBytes, chunkSize, keepTar)
}

func (e *env) pushTar(b testing.TB, repo string, tarBytes []byte, chunkSize int, keepTar bool) *layer {
	b.Helper()
	l, err := e.pushTarErr(repo, tarBytes, chunkSize, keepTar)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// pushTarErr is pushTar for goroutines other than the benchmark's.
func (e *env) pushTarErr(repo string, tarBytes []byte, chunkSize int, keepTar bool) (*layer, error) {
	var blob bytes.Buffer
	conv, err := convert.ConvertLayer(context.Background(), bytes.NewReader(tarBytes), &blob, convert.LayerOptions{ChunkSize: chunkSize})
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", repo, err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: conv.Digest, Size: conv.Size}
	if err := e.reg.PushBlob(context.Background(), e.backend+"/"+repo, desc, bytes.NewReader(blob.Bytes())); err != nil {
		return nil, fmt.Errorf("push %s: %w", repo, err)
	}
	l := &layer{repo: repo, desc: desc, toc: conv.TOCDigest}
	if keepTar {
		l.tar = tarBytes
	}
	return l, nil
}

// mounted is a layer mounted as the daemon mounts it: through FUSE, reading the blob from the
// registry through the link, with a cache store of its own.
type mounted struct {
	dir      string // the FUSE mountpoint
	cacheDir string // the cache store's directory (set by mount)
	idx      *rillfs.Index
	metrics  *prometheus.Registry
	close    func() // unmounts and closes; also run by the benchmark's cleanup
}

// quietLog keeps warnings and errors only.
func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	return logrus.NewEntry(l)
}

// mount mounts l at a new directory with a new, empty cache: nothing of it is local.
func (e *env) mount(b testing.TB, l *layer) *mounted {
	b.Helper()
	cacheDir := b.TempDir()
	store, err := cache.Open(context.Background(), cacheDir)
	if err != nil {
		b.Fatal(err)
	}
	m, err := e.mountWith(b, l, store)
	if err != nil {
		store.Close()
		b.Fatal(err)
	}
	m.cacheDir = cacheDir
	inner := m.close
	m.close = sync.OnceFunc(func() { inner(); store.Close() })
	b.Cleanup(m.close)
	return m
}

// mountWith mounts l with its cache in store (which the caller closes after m.close).
func (e *env) mountWith(b testing.TB, l *layer, store *cache.Store) (*mounted, error) {
	ctx := context.Background()
	br, err := e.reg.BlobReader(ctx, e.link.Addr()+"/"+l.repo, l.desc)
	if err != nil {
		return nil, err
	}
	toc, err := rillfs.LoadTOC(ctx, br, l.desc.Size, l.toc, rillfs.Limits{})
	if err != nil {
		br.Close()
		return nil, err
	}
	idx, err := rillfs.NewIndex(toc)
	if err != nil {
		br.Close()
		return nil, err
	}
	idx.DropWhiteouts() // a bottom layer, as the snapshotter mounts it
	h, err := store.Layer(ctx, l.desc.Digest)
	if err != nil {
		br.Close()
		return nil, err
	}
	h.Pin()
	metrics := rillfs.NewMetrics()
	preg := prometheus.NewRegistry()
	preg.MustRegister(metrics.Collectors()...)
	dir := filepath.Join(b.TempDir(), "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	fm, err := rillfs.Mount(ctx, dir, idx, br, rillfs.MountOptions{Cache: h, Metrics: metrics, Log: quietLog()})
	if err != nil {
		h.Release()
		br.Close()
		return nil, err
	}
	m := &mounted{dir: dir, idx: idx, metrics: preg}
	m.close = sync.OnceFunc(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fm.Unmount(ctx); err != nil {
			b.Errorf("unmount %s: %v", dir, err)
			fm.Wait()
		}
		h.Release()
		br.Close()
	})
	b.Cleanup(m.close)
	return m, nil
}

// counter returns the value of the fs counter name (summed over its labels).
func (m *mounted) counter(b testing.TB, name string) float64 {
	b.Helper()
	fams, err := m.metrics.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var v float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, mt := range f.GetMetric() {
				v += mt.GetCounter().GetValue()
			}
		}
	}
	return v
}

// extract unpacks l's tar into a new directory, as a full pull would.
func extract(b *testing.B, l *layer) string {
	b.Helper()
	dir := b.TempDir()
	if _, err := archive.Apply(context.Background(), dir, bytes.NewReader(l.tar)); err != nil {
		b.Fatalf("extract %s: %v", l.repo, err)
	}
	return dir
}

// mountOverlay mounts an overlayfs over lower with an upper directory, the way containerd's
// overlay snapshotter mounts a container's rootfs; the benchmark's cleanup unmounts it.
func mountOverlay(b *testing.B, lower string) string {
	b.Helper()
	base := b.TempDir()
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		b.Fatalf("mount overlayfs over %s: %v", lower, err)
	}
	b.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			b.Errorf("unmount %s: %v", merged, err)
		}
	})
	return merged
}

// dropPageCache makes the kernel forget the cached pages of every file named, and of every
// regular file under the directories named, so that their next read reaches the filesystem
// (for a FUSE file: rill, or the cache file behind a passthrough open).
func dropPageCache(b testing.TB, paths ...string) {
	b.Helper()
	drop := func(p string) {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatalf("fadvise %s: %v", p, err)
		}
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			b.Fatal(err)
		}
		if !st.IsDir() {
			drop(p)
			continue
		}
		err = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				drop(q)
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// readAll reads the file at path from start to end with a 1 MiB buffer (read(2), never
// mmap: this process serves the FUSE mounts) and returns the number of bytes read.
func readAll(b testing.TB, path string, buf []byte) int64 {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatalf("read %s at %d: %v", path, n, err)
		}
	}
}

// sameContent checks that path reads back as want.
func sameContent(b testing.TB, path string, want []byte) {
	b.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		b.Fatalf("%s: %d bytes, differs from the layer's %d", path, len(got), len(want))
	}
}

// buildStatic builds a small static Go program (CGO_ENABLED=0) and returns its bytes.
func buildStatic(b *testing.B, src string) []byte {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		b.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		b.Fatalf("go is not on PATH: %v", err)
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", "prog", "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the static program: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "prog"))
	if err != nil {
		b.Fatal(err)
	}
	return bin
}

// percentile returns the p-th percentile (0..1) of ds, which it sorts.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(p * float64(len(ds)-1))
	return ds[i]
}

// chunkSizes are the chunk sizes the read benchmarks compare, the one rill create uses by
// default (convert.DefaultChunkSize) named "-default": the sizes it was chosen from.
var chunkSizes = func() []struct {
	name string
	size int
} {
	var sizes []struct {
		name string
		size int
	}
	for _, kib := range []int{1024, 256, 64} {
		name := fmt.Sprintf("chunk-%dKiB", kib)
		if kib == 1024 {
			name = "chunk-1MiB"
		}
		if kib<<10 == convert.DefaultChunkSize {
			name += "-default"
		}
		sizes = append(sizes, struct {
			name string
			size int
		}{name, kib << 10})
	}
	return sizes
}()

func init() {
	// containerd's registry code logs through the standard logger at info level.
	logrus.SetLevel(logrus.WarnLevel)
}
