// Command bench measures how soon a container is ready — serving, not merely pulled — over an
// emulated wide-area link, for containerd's own full pull, for stargz-snapshotter v0.18.2
// (modes stargz and stargz-opt: eStargz and optimized eStargz, its daemon built from
// script/bench/stargz), for rill streaming (with and without a prefetch profile), and for any
// other proxy snapshotter given with --peer.
//
// Every run is cold: a fresh containerd and snapshotter with empty state, the page cache
// dropped. The registry and the link stay up for the whole benchmark. It prints a table
// (median, min and max over the runs) and writes results.csv, runs.csv and time-to-ready.png
// into --out.
//
//	go run ./script/bench                       # everything: 3 runs of each workload and mode
//	go run ./script/bench --quick               # small workloads, 1 run: a smoke test
//	go run ./script/bench --workloads bigfile,smallfiles --modes full,rill --runs 1
//	go run ./script/bench --workloads python --runs 1 --modes full,stargz,stargz-opt,rill,rill-profile
//
// It runs as root and needs what script/setup-test-env.sh installs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	if _, err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		stop()
		os.Exit(1)
	}
}
