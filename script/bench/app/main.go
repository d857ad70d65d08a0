// Command app is the program of the generated benchmark workloads. It reads what a service of
// that kind reads at start, then prints "ready" (the readiness signal the benchmark waits for)
// and exits.
//
//	app bigfile FILE READS SIZE    reads READS pieces of SIZE bytes at offsets spread over FILE
//	app smallfiles DIR EVERY       reads every EVERY-th file of DIR/*/* (in name order)
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: app bigfile FILE READS SIZE | app smallfiles DIR EVERY")
	}
	nums := make([]int64, 0, 2)
	for _, a := range args[2:] {
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			return fmt.Errorf("argument %q: %w", a, err)
		}
		nums = append(nums, n)
	}
	switch {
	case args[0] == "bigfile" && len(nums) == 2:
		return readScattered(args[1], nums[0], nums[1])
	case args[0] == "smallfiles" && len(nums) == 1:
		return readEvery(args[1], int(nums[0]))
	}
	return fmt.Errorf("bad arguments %q", args)
}

// BigfileOffsets returns the offsets readScattered reads: reads pieces of size spread evenly
// over a file of fileSize bytes, each moved by a pseudo-random amount within its stride.
func bigfileOffsets(fileSize, reads, size int64) []int64 {
	stride := fileSize / reads
	offs := make([]int64, 0, reads)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range reads {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		off := i*stride + int64(x%uint64(max(stride-size, 1)))
		offs = append(offs, min(off, fileSize-size))
	}
	return offs
}

func readScattered(path string, reads, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	buf := make([]byte, size)
	for _, off := range bigfileOffsets(st.Size(), reads, size) {
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			return fmt.Errorf("reading %s at %d: %w", path, off, err)
		}
	}
	return nil
}

func readEvery(dir string, every int) error {
	files, err := filepath.Glob(filepath.Join(dir, "*", "*"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no files below %s", dir)
	}
	for i := 0; i < len(files); i += every {
		if _, err := os.ReadFile(files[i]); err != nil {
			return err
		}
	}
	return nil
}
