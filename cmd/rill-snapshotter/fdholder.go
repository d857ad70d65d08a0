package main

import (
	"io"

	"github.com/rillstream/rill/fdstore"
)

// runSubcommand runs `rill-snapshotter fd-holder ...`, the process that keeps the FUSE
// descriptors of streamed layers across the daemon's restarts when it does not run under
// systemd (see fdstore). The daemon starts it itself as "/proc/self/exe fd-holder --socket PATH".
func runSubcommand(args []string, stderr io.Writer) (code int, ok bool) {
	if len(args) > 0 && args[0] == "fd-holder" {
		return fdstore.HolderMain(args[1:], stderr), true
	}
	return 0, false
}
