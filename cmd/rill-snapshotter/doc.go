// Command rill-snapshotter is rill's node daemon: a containerd proxy snapshotter serving the
// snapshots gRPC API on a unix socket (default /run/rill/rill.sock).
//
// It reads /etc/rill/config.toml (see script/config.toml for every key), logs with logrus,
// serves Prometheus metrics when metrics.address is set, tells systemd when it is ready
// (Type=notify), and on SIGTERM or SIGINT stops accepting calls, lets in-flight calls finish,
// closes its metadata store and exits 0.
package main
