package perf

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/rillstream/rill/internal/testlayer"
)

// startProgram is the program started: it reads its configuration file (named by its
// argument), as a service would, and exits.
const startProgram = `package main

import "os"

func main() {
	if _, err := os.ReadFile(os.Args[1]); err != nil {
		os.Exit(1)
	}
}
`

// BenchmarkStartTime execs a small static binary (built with CGO_ENABLED=0 at setup) from a
// rootfs whose data is local, many times, in a child process (of a launcher process: see
// launcher): rill (an overlayfs over the
// FUSE mount, the layer complete in rill's cache: the kernel reads it through FUSE
// passthrough) versus overlayfs (an overlayfs over the extracted layer). The *-cold-page-cache
// variants drop the page cache of the binary before each start. Target (issue #5): rill at
// most 1.1× overlayfs.
func BenchmarkStartTime(b *testing.B) {
	e := newEnv(b)
	bin := buildStatic(b, startProgram)
	l := startLauncher(b) // before the mounts: stopped after them
	entries := []testlayer.Entry{
		testlayer.Dir("bin/", 0o755),
		testlayer.Reg("bin/app", bin, 0o755),
		testlayer.Dir("etc/", 0o755),
		testlayer.Reg("etc/app.conf", []byte("listen = :8080\n"), 0o644),
	}
	// Other files of the layer, as an image has them.
	for i := range 200 {
		entries = append(entries, testlayer.Reg(fmt.Sprintf("usr/share/app/file-%03d", i), testlayer.RandomBytes(uint64(i), 4096+i*97), 0o644))
	}
	layer := e.pushLayer(b, "perf/start", entries, 0, true)
	m := e.mount(b, layer)
	fuseBin := filepath.Join(m.dir, "bin/app")
	sameContent(b, fuseBin, bin) // the binary is local now
	extracted := extract(b, layer)
	rillRoot := mountOverlay(b, m.dir)
	overlayRoot := mountOverlay(b, extracted)

	for _, c := range []struct {
		name string
		root string
		drop []string // dropped from the page cache before each start (cold-page-cache only)
	}{
		{"rill", rillRoot, []string{filepath.Join(rillRoot, "bin/app"), fuseBin, m.cacheDir}},
		{"overlayfs", overlayRoot, []string{filepath.Join(overlayRoot, "bin/app"), filepath.Join(extracted, "bin/app")}},
	} {
		for _, cold := range []bool{false, true} {
			name := c.name
			if cold {
				name += "-cold-page-cache"
			}
			b.Run(name, func(b *testing.B) {
				var total time.Duration
				start := func() {
					d, err := l.run(filepath.Join(c.root, "bin/app"), filepath.Join(c.root, "etc/app.conf"))
					if err != nil {
						b.Fatal(err)
					}
					total += d
				}
				start()
				total = 0
				for b.Loop() {
					if cold {
						b.StopTimer()
						dropPageCache(b, c.drop...)
						b.StartTimer()
					}
					start()
				}
				// As the launcher measured it, without the round trip to it.
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/start")
			})
		}
	}
}
