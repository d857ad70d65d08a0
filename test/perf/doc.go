// Package perf holds the micro-benchmarks issue #5 asks for: what one streamed layer costs
// and delivers over a link of 100 Mbit/s shared by all connections and 20 ms round trip, next
// to the targets the issue sets. It has no code of its own; everything is in its _test.go
// files, and `go test` without -bench only compiles them.
//
// Each benchmark sets up what it needs: the distribution registry on loopback
// (internal/regtest) behind an emulated link (internal/link, 100 Mbit/s, 20 ms), layers built
// with internal/testlayer and converted as `rill create` converts them (convert.ConvertLayer),
// pushed to the registry, and mounted as the daemon mounts them — the TOC loaded over the
// link with remote's BlobReader, fs.NewIndex, fs.Mount with a cache store in a temporary
// directory, passthrough on (the daemon's default). No prefetch and no background fetch run:
// every byte read cold is an on-demand read. Everything mounted is unmounted and every server
// stopped when the benchmark ends, failed or not.
//
//   - BenchmarkColdRandomRead4K: 4 KiB preads at random 4 KiB-aligned offsets of a 256 MiB
//     incompressible file, each in a chunk nothing has been read in or near (no chunk local,
//     none brought along by an earlier read's neighbour fetch or the kernel's read-ahead; a
//     read that moves no byte over the link fails the benchmark). Reports ms/read, RTTs/read
//     (target ≈ 1), p50 and p90, and link-KiB/read (what one read moves). Sub-benchmarks by
//     chunk size: 1 MiB, 256 KiB and 64 KiB, rill create's default (convert.DefaultChunkSize)
//     marked "-default".
//   - BenchmarkColdSequentialRead: a 128 MiB incompressible file read from start to end with
//     a 1 MiB buffer, a new mount and an empty cache each time. Reports MB/s and link-fraction,
//     the read rate over the link's (target ≥ 0.8), and link-bytes/file-byte.
//   - BenchmarkWarmSequentialRead: the same kind of file, complete in rill's cache, the page
//     cache dropped for it (posix_fadvise DONTNEED on the file read, the FUSE file and the
//     cache's files) before each read. Sub-benchmarks rill (an overlayfs over the FUSE mount:
//     what a container reads through), rill-fuse (the FUSE mount itself) and overlayfs (an
//     overlayfs over the layer extracted to disk). Target: rill ≥ 0.9× overlayfs in MB/s.
//   - BenchmarkStartTime: execs a small static binary (built with CGO_ENABLED=0 at setup; it
//     reads a configuration file of the layer and exits) in a child process, from an
//     overlayfs over the rill mount whose data is local versus an overlayfs over the extracted
//     layer; the -cold-page-cache variants drop the binary's pages before each start. Target:
//     rill ≤ 1.1× overlayfs.
//   - BenchmarkMemory50Layers: 50 layers of 3000 files each (plus their directories and some
//     symlinks, in a realistic tree) mounted in this process as the daemon mounts them, with
//     one shared cache store; every entry looked up, one file in 200 read. Reports the Go heap
//     in use and VmRSS after a forced GC with free memory returned to the kernel, and how much
//     VmRSS grew from before the mounts (target: the daemon ≤ 100 MiB). This measures the
//     streaming state — TOC indexes, FUSE servers and inodes, cache handles, registry access —
//     not the whole daemon: the gRPC server, containerd's metastore and the metrics registry
//     are not in it, and the test binary's own baseline (link proxy, registry client) is in
//     the absolute VmRSS; the kernel's memory for the mounts is in neither.
//
// A process must never mmap a file of a FUSE mount it serves, nor fork and exec a program
// from one (a garbage collection during the exec deadlocks a Go process): the benchmarks
// read with read(2)/pread only, and programs are started by a launcher child process.
//
// Run (root: they mount FUSE and overlayfs; the distribution registry binary must be on PATH,
// as script/setup-test-env.sh installs it):
//
//	make bench-micro                                   # every benchmark, BENCHTIME=5s
//	go test -run '^$' -bench . -benchtime 5s -timeout 30m ./test/perf/
//	go test -run '^$' -bench 'ColdRandom' -benchtime 100x ./test/perf/
//
// Setup builds and converts several hundred MiB of layers: the whole run takes a few minutes.
package perf
