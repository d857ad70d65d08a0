// Command demo shows rill at work on this machine (`make demo`): it starts a registry,
// rill-snapshotter and a private containerd, builds and pushes a small image, pulls it through
// CRI into rill, runs it in a pod, and shows what happened at each step. Then it streams: it
// builds a realistic image (Debian with python3 and a 256 MiB data file), runs rill create on
// it, and pulls it twice over an emulated 100 Mbit/s, 20 ms link — in full (overlayfs), then
// streamed by rill — each followed by a container doing real work, and prints time to ready
// and bytes fetched side by side, and the bytes the background fetch brought later. It stops
// everything it started (also on Ctrl-C or failure) and exits non-zero when a step fails.
//
// It needs root and the tools of script/setup-test-env.sh.
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
	if err := run(ctx, newPrinter(os.Stdout)); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "\ndemo interrupted; everything it started is stopped (%v)\n", err)
		} else {
			fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		}
		os.Exit(1)
	}
}
