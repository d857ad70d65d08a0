// Package script holds the files rill installs on a node, for `rill install-node`: the
// systemd unit and the default config (the same files script/install.sh copies).
package script

import _ "embed"

// Unit is rill-snapshotter's systemd unit; its ExecStart names /usr/local/bin/rill-snapshotter.
//
//go:embed rill-snapshotter.service
var Unit string

// Config is the default /etc/rill/config.toml, every key documented with its default.
//
//go:embed config.toml
var Config string
