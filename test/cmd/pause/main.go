// Command pause is the sandbox ("pause") process of the e2e tests' pod sandboxes: a static binary
// that sleeps until it receives SIGTERM or SIGINT, then exits 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}
