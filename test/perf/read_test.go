package perf

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rillstream/rill/internal/testlayer"
)

// coldPicker hands out offsets of a file at which nothing has been read: a chunk never read,
// with none of the chunks a read of it could bring along (neighbour fetch, kernel read-ahead)
// read either.
type coldPicker struct {
	chunks []chunkSpan
	order  []int
	used   []bool
	next   int
	rnd    *rand.Rand
}

type chunkSpan struct{ off, size int64 }

// spill is how far past its chunk a cold read may fetch: rill's neighbour window (256 KiB of
// the blob) and the kernel's read-ahead (128 KiB), with margin.
const spill = 512 << 10

func newColdPicker(chunks []chunkSpan, seed uint64) *coldPicker {
	rnd := rand.New(rand.NewPCG(seed, seed+1))
	return &coldPicker{chunks: chunks, order: rnd.Perm(len(chunks)), used: make([]bool, len(chunks)), rnd: rnd}
}

// pick returns a 4 KiB-aligned offset inside a cold chunk, or false when none is left.
func (p *coldPicker) pick() (int64, bool) {
	for ; p.next < len(p.order); p.next++ {
		i := p.order[p.next]
		if p.used[i] {
			continue
		}
		c := p.chunks[i]
		// Mark this chunk and every chunk a read of it could bring along as used; the
		// chunk before it too, whose read could have brought this one.
		for j := i - 1; j < len(p.chunks) && (j <= i || p.chunks[j].off < c.off+c.size+spill); j++ {
			if j >= 0 {
				p.used[j] = true
			}
		}
		p.next++
		return c.off + p.rnd.Int64N(max(c.size/4096, 1))*4096, true
	}
	return 0, false
}

// BenchmarkColdRandomRead4K measures 4 KiB preads at random offsets of a 256 MiB
// incompressible file, each at an offset nothing has been read near (no chunk local), through
// the FUSE mount over the emulated link. Target (issue #5): about one round trip.
func BenchmarkColdRandomRead4K(b *testing.B) {
	const size = 256 << 20
	e := newEnv(b)
	body := testlayer.RandomBytes(1, size)
	for _, cs := range chunkSizes {
		l := e.pushLayer(b, "perf/random-"+strings.ToLower(cs.name), []testlayer.Entry{testlayer.Reg("data/big.bin", body, 0o644)}, cs.size, false)
		b.Run(cs.name, func(b *testing.B) {
			var (
				m      *mounted
				f      *os.File
				picker *coldPicker
				seed   uint64
			)
			remount := func() {
				if f != nil {
					f.Close()
					m.close()
				}
				m = e.mount(b, l)
				var err error
				if f, err = os.Open(filepath.Join(m.dir, "data/big.bin")); err != nil {
					b.Fatal(err)
				}
				var spans []chunkSpan
				for _, c := range m.idx.Lookup("data/big.bin").Chunks {
					spans = append(spans, chunkSpan{c.Offset, c.Size})
				}
				seed++
				picker = newColdPicker(spans, seed)
				// One untimed cold read: the registry connection is open, as it is once
				// the daemon has loaded the layer's TOC.
				off, _ := picker.pick()
				buf := make([]byte, 4096)
				if _, err := f.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			remount()
			defer func() { f.Close(); m.close() }()
			buf := make([]byte, 4096)
			var (
				lat      []time.Duration
				total    time.Duration
				fetched  int64
				warmHits int
			)
			for b.Loop() {
				off, ok := picker.pick()
				if !ok {
					b.StopTimer()
					remount()
					off, _ = picker.pick()
					b.StartTimer()
				}
				down := e.link.BytesDown()
				start := time.Now()
				if _, err := f.ReadAt(buf, off); err != nil {
					b.Fatalf("read at %d: %v", off, err)
				}
				d := time.Since(start)
				lat = append(lat, d)
				total += d
				moved := e.link.BytesDown() - down
				fetched += moved
				if moved == 0 {
					warmHits++
				}
				if !bytes.Equal(buf, body[off:off+4096]) {
					b.Fatalf("wrong bytes at %d", off)
				}
			}
			n := len(lat)
			mean := total / time.Duration(n)
			b.ReportMetric(float64(mean.Microseconds())/1000, "ms/read")
			b.ReportMetric(float64(mean)/float64(linkConfig.RTT), "RTTs/read")
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.9).Microseconds())/1000, "p90-ms")
			b.ReportMetric(float64(fetched)/float64(n)/1024, "link-KiB/read")
			if warmHits > 0 {
				b.Errorf("%d of %d reads moved no byte over the link: not cold", warmHits, n)
			}
		})
	}
}

// BenchmarkColdSequentialRead reads a 128 MiB incompressible file from start to end with a
// 1 MiB buffer through the FUSE mount, nothing of it local (a new mount and an empty cache
// each time). Target (issue #5): at least 80 % of the link's rate ("link-fraction").
func BenchmarkColdSequentialRead(b *testing.B) {
	const size = 128 << 20
	e := newEnv(b)
	body := testlayer.RandomBytes(2, size)
	for _, cs := range chunkSizes {
		l := e.pushLayer(b, "perf/sequential-"+strings.ToLower(cs.name), []testlayer.Entry{testlayer.Reg("data/big.bin", body, 0o644)}, cs.size, false)
		b.Run(cs.name, func(b *testing.B) {
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			var (
				elapsed time.Duration
				moved   int64
				runs    int
			)
			for b.Loop() {
				b.StopTimer()
				m := e.mount(b, l)
				path := filepath.Join(m.dir, "data/big.bin")
				down := e.link.BytesDown()
				b.StartTimer()
				start := time.Now()
				if n := readAll(b, path, buf); n != size {
					b.Fatalf("read %d bytes, want %d", n, size)
				}
				elapsed += time.Since(start)
				b.StopTimer()
				moved += e.link.BytesDown() - down
				runs++
				if runs == 1 {
					sameContent(b, path, body) // from the cache now
				}
				m.close()
				b.StartTimer()
			}
			rate := float64(size) * float64(runs) / elapsed.Seconds()
			b.ReportMetric(rate/linkBytesPerSec, "link-fraction")
			b.ReportMetric(float64(moved)/float64(size)/float64(runs), "link-bytes/file-byte")
		})
	}
}

// BenchmarkWarmSequentialRead reads a 128 MiB incompressible file whose every chunk is in
// rill's cache (read once before the timer), with the page cache dropped for it before each
// read, versus the same bytes from an overlayfs mount of the extracted layer. Sub-benchmarks:
// rill (an overlayfs over the FUSE mount: what a container sees), rill-fuse (the FUSE mount
// itself) and overlayfs. Target (issue #5): rill at least 0.9× overlayfs.
func BenchmarkWarmSequentialRead(b *testing.B) {
	const size = 128 << 20
	e := newEnv(b)
	body := testlayer.RandomBytes(3, size)
	l := e.pushLayer(b, "perf/warm", []testlayer.Entry{testlayer.Reg("data/big.bin", body, 0o644)}, 0, true)
	m := e.mount(b, l)
	fusePath := filepath.Join(m.dir, "data/big.bin")
	sameContent(b, fusePath, body) // makes the file complete in the cache
	extracted := extract(b, l)
	rillRoot := mountOverlay(b, m.dir)
	overlayRoot := mountOverlay(b, extracted)

	for _, c := range []struct {
		name string
		path string
		drop []string // what to drop from the page cache before each read
	}{
		{"rill", filepath.Join(rillRoot, "data/big.bin"), []string{filepath.Join(rillRoot, "data/big.bin"), fusePath, m.cacheDir}},
		{"rill-fuse", fusePath, []string{fusePath, m.cacheDir}},
		{"overlayfs", filepath.Join(overlayRoot, "data/big.bin"), []string{filepath.Join(overlayRoot, "data/big.bin"), filepath.Join(extracted, "data/big.bin")}},
	} {
		b.Run(c.name, func(b *testing.B) {
			sameContent(b, c.path, body)
			opens := m.counter(b, "rill_fs_passthrough_opens_total")
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				dropPageCache(b, c.drop...)
				b.StartTimer()
				if n := readAll(b, c.path, buf); n != size {
					b.Fatalf("read %d bytes, want %d", n, size)
				}
			}
			if c.name != "overlayfs" {
				// FUSE passthrough in use: the kernel reads the cache file itself.
				b.ReportMetric(m.counter(b, "rill_fs_passthrough_opens_total")-opens, "passthrough-opens")
			}
		})
	}
}
