package perf

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/internal/testlayer"
)

const (
	memLayers        = 50
	memFilesPerLayer = 3000
)

// BenchmarkMemory50Layers measures the memory of rill's streaming state with 50 layers
// mounted, each of 3000 files (and their directories and some symlinks) in a tree shaped like
// a distribution's or a language runtime's: the layers are mounted in this process as the
// daemon mounts them (TOC loaded over the link, index, FUSE mount, a handle on one shared
// cache store), every entry is looked up (a walk with lstat) and one file in 200 is read. It
// then forces a garbage collection, returns free memory to the kernel, and reports the Go heap
// in use and the process's VmRSS, and how much VmRSS grew from before the mounts. The time
// per op is the time to mount the 50 layers. Target (issue #5): daemon RSS at most 100 MiB.
func BenchmarkMemory50Layers(b *testing.B) {
	e := newEnv(b)
	layers := make([]*layer, memLayers)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		next     = make(chan int)
	)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for i := range next {
				tarBytes, err := realisticLayer(uint64(i), memFilesPerLayer)
				var l *layer
				if err == nil {
					l, err = e.pushTarErr(fmt.Sprintf("perf/memory-%02d", i), tarBytes, 0, false)
				}
				mu.Lock()
				layers[i] = l
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	for i := range memLayers {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	store, err := cache.Open(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() }) // after the unmounts, registered later

	var maxHeap, maxRSS, maxDelta float64
	var entries int
	for b.Loop() {
		b.StopTimer()
		baseRSS := settle(b)
		b.StartTimer()
		mounts := make([]*mounted, 0, memLayers)
		for _, l := range layers {
			m, err := e.mountWith(b, l, store)
			if err != nil {
				b.Fatalf("mount %s: %v", l.repo, err)
			}
			mounts = append(mounts, m)
		}
		b.StopTimer()
		entries = useLayers(b, mounts)
		rss := settle(b)
		if path := os.Getenv("RILL_PERF_HEAPPROFILE"); path != "" {
			writeHeapProfile(b, path)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		maxHeap = max(maxHeap, float64(ms.HeapInuse)/(1<<20))
		maxRSS = max(maxRSS, rss/(1<<20))
		maxDelta = max(maxDelta, (rss-baseRSS)/(1<<20))
		for _, m := range mounts {
			m.close()
		}
		b.StartTimer()
	}
	b.ReportMetric(maxHeap, "heap-inuse-MiB")
	b.ReportMetric(maxRSS, "rss-MiB")
	b.ReportMetric(maxDelta, "rss-delta-MiB")
	b.ReportMetric(float64(entries), "entries")
}

// settle collects garbage, returns free memory to the kernel and returns the VmRSS in bytes.
func settle(b *testing.B) float64 {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// useLayers looks up every entry of the mounted layers and reads one regular file in 200, as
// containers starting from them would, four layers at a time; it returns the number of
// entries.
func useLayers(b *testing.B, mounts []*mounted) int {
	b.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		entries int
		errs    []error
		next    = make(chan string)
	)
	for range 4 {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for dir := range next {
				n, regs := 0, 0
				err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					n++
					if _, err := os.Lstat(p); err != nil {
						return err
					}
					if d.Type().IsRegular() {
						if regs++; regs%200 == 0 {
							f, err := os.Open(p)
							if err != nil {
								return err
							}
							defer f.Close()
							if _, err := f.Read(buf); err != nil && err != io.EOF {
								return fmt.Errorf("read %s: %w", p, err)
							}
						}
					}
					return nil
				})
				mu.Lock()
				entries += n
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	for _, m := range mounts {
		next <- m.dir
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		b.Fatal(errs[0])
	}
	return entries
}

// writeHeapProfile writes the live heap to path (go tool pprof -sample_index=inuse_space).
func writeHeapProfile(b *testing.B, path string) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// text is the vocabulary of the generated files: they compress like source and text do.
var text = func() []byte {
	words := strings.Fields("import def class return self None if else for in while with as from try except raise lambda yield async await package func var const type struct interface map chan go defer select case default switch break continue fallthrough goto the of and to a is that it was for on are with they be at one have this from by hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find")
	rnd := rand.New(rand.NewPCG(7, 8))
	var sb strings.Builder
	for sb.Len() < 256<<10 {
		sb.WriteString(words[rnd.IntN(len(words))])
		if rnd.IntN(12) == 0 {
			sb.WriteByte('\n')
		} else {
			sb.WriteByte(' ')
		}
	}
	return []byte(sb.String())
}()

// realisticLayer builds the tar of a layer of files regular files in a tree shaped like a
// language runtime's: packages of modules in nested directories, long names, file sizes
// from a few bytes to tens of KiB (most small), some symlinks.
func realisticLayer(seed uint64, files int) ([]byte, error) {
	rnd := rand.New(rand.NewPCG(seed, seed*31+1))
	var entries []testlayer.Entry
	dirs := map[string]bool{}
	addDir := func(p string) {
		for _, d := range parents(p) {
			if !dirs[d] {
				dirs[d] = true
				entries = append(entries, testlayer.Dir(d+"/", 0o755))
			}
		}
	}
	roots := []string{"usr/lib/python3.12/site-packages", "usr/share/doc", "usr/lib/x86_64-linux-gnu", "usr/share/locale", "opt/app/node_modules"}
	var regs []string
	for i := 0; i < files; {
		root := roots[rnd.IntN(len(roots))]
		pkg := fmt.Sprintf("%s/layer%02d-package-%03d", root, seed, rnd.IntN(files/40+1))
		sub := pkg
		for d := rnd.IntN(3); d > 0; d-- {
			sub += fmt.Sprintf("/sub_module_%d", rnd.IntN(8))
		}
		addDir(sub + "/x")
		for j := rnd.IntN(12) + 1; j > 0 && i < files; j-- {
			name := fmt.Sprintf("%s/%s_%04d.%s", sub, []string{"module", "helpers", "README", "__init__", "index", "libfoo.so"}[rnd.IntN(6)], i, []string{"py", "pyc", "js", "txt", "mo", "1"}[rnd.IntN(6)])
			size := int(64 * (1 << rnd.IntN(10)) * (rnd.IntN(100) + 1) / 100) // 0 to 32 KiB, mostly small
			off := rnd.IntN(len(text) - size)
			entries = append(entries, testlayer.Reg(name, text[off:off+size], 0o644))
			regs = append(regs, name)
			i++
		}
	}
	for _, i := range rnd.Perm(len(regs))[:files/20] {
		target := regs[i]
		entries = append(entries, testlayer.Symlink(target+".link", filepath.Base(target)))
	}
	for i := range entries {
		entries[i].Header.Format = tar.FormatPAX
	}
	return testlayer.Tar(entries, 0)
}

// parents returns the directories above p, outermost first.
func parents(p string) []string {
	var out []string
	for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}
