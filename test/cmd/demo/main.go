// Command demo shows rill at work on this machine (`make demo`): it starts a registry,
// rill-snapshotter and a private containerd, builds and pushes a small image, pulls it through
// CRI into rill, runs it in a pod, shows what happened at each step, and stops everything
// (also on Ctrl-C or failure). It exits non-zero when a step fails.
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
