package testlayer

import (
	"fmt"
	"math/rand/v2"
	"path"
	"strings"
)

// Runtime is a layer shaped like a language runtime with scientific packages (a Debian image
// with python3, numpy and scipy): files regular files, most of a few KiB, in packages of
// nested directories with long names, about one symlink per twenty files and a few hardlinks,
// and big files (shared libraries) of one to eight MiB, which a converter cuts into chunks. It
// is deterministic for seed. Runtime(seed, 30_000, 32) converted with 256 KiB chunks has about
// 35,000 TOC entries, as the largest layer of that image does.
func Runtime(seed uint64, files, big int) []Entry {
	rnd := rand.New(rand.NewPCG(seed, seed*31+1))
	var entries []Entry
	dirs := map[string]bool{}
	addDirs := func(p string) {
		var missing []string
		for d := path.Dir(p); d != "." && !dirs[d]; d = path.Dir(d) {
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			dirs[missing[i]] = true
			entries = append(entries, Dir(missing[i]+"/", 0o755))
		}
	}
	roots := []string{
		"usr/lib/python3/dist-packages/numpy",
		"usr/lib/python3/dist-packages/scipy",
		"usr/lib/python3.11",
		"usr/share/doc",
		"usr/share/locale",
		"usr/include/python3.11",
		"usr/lib/x86_64-linux-gnu",
	}
	words := []string{"linalg", "sparse", "signal", "optimize", "_lib", "tests", "core", "fft", "stats", "special", "integrate", "interpolate", "io", "ndimage", "spatial", "cluster", "__pycache__", "LC_MESSAGES", "encodings", "email", "distutils"}
	exts := []string{".py", ".cpython-311.pyc", ".pyi", ".txt", ".mo", ".h", ".cpython-311-x86_64-linux-gnu.so", ".gz"}
	var regs []string
	for i := 0; i < files; {
		dir := roots[rnd.IntN(len(roots))]
		for d := rnd.IntN(4); d > 0; d-- {
			dir += "/" + words[rnd.IntN(len(words))]
		}
		for j := rnd.IntN(24) + 1; j > 0 && i < files; j-- {
			name := fmt.Sprintf("%s/%s_%05d%s", dir, words[rnd.IntN(len(words))], i, exts[rnd.IntN(len(exts))])
			addDirs(name)
			size := 64 * (1 << rnd.IntN(9)) * (rnd.IntN(100) + 1) / 100 // up to 16 KiB, mostly small
			off := rnd.IntN(len(runtimeText) - size)
			entries = append(entries, Reg(name, runtimeText[off:off+size], 0o644))
			regs = append(regs, name)
			i++
		}
	}
	for k := range big {
		name := fmt.Sprintf("usr/lib/x86_64-linux-gnu/lib%s-%d.so.%d", words[k%len(words)], k, k%3)
		addDirs(name)
		size := (1 + rnd.IntN(8)) << 20
		body := make([]byte, 0, size)
		for len(body) < size {
			off := rnd.IntN(len(runtimeText) / 2)
			body = append(body, runtimeText[off:min(len(runtimeText), off+size-len(body))]...)
		}
		entries = append(entries, Reg(name, body, 0o755))
	}
	for _, i := range rnd.Perm(len(regs))[:files/20] {
		entries = append(entries, Symlink(regs[i]+".link", path.Base(regs[i])))
	}
	for _, i := range rnd.Perm(len(regs))[:files/200] {
		entries = append(entries, Hardlink(regs[i]+".hard", regs[i]))
	}
	return entries
}

// runtimeText is the content files are cut from: compressible, as source and text are.
var runtimeText = func() []byte {
	rnd := rand.New(rand.NewPCG(7, 11))
	words := strings.Fields("def class return import from self numpy array dtype shape axis None True False if else for in while try except raise lambda yield with as assert pass break continue global")
	var sb strings.Builder
	for sb.Len() < 1<<20 {
		sb.WriteString(words[rnd.IntN(len(words))])
		if rnd.IntN(9) == 0 {
			sb.WriteByte('\n')
		} else {
			sb.WriteByte(' ')
		}
	}
	return []byte(sb.String())
}()
