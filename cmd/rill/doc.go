// Command rill is the registry side of rill: it creates streaming artifacts for images and
// binds them to their tags, shows and verifies them, and deletes images together with their
// artifacts.
//
//	rill create IMAGE [--platform P,...] [--prefetch-profile FILE] [--no-bind] [--force]
//	                  [--chunk-size N] [--compression-level N] [--parallel N]
//	                  [--no-wait [--watcher ADDR]]
//	rill show IMAGE [--json]
//	rill verify IMAGE [--json]
//	rill delete IMAGE [--streaming-only]
//
// On a node: install-node (binaries, unit, config, rill's entries merged into containerd's
// config.toml; internal/containerdconf), doctor [IMAGE] (each misconfiguration with its fix;
// whether IMAGE would stream), why [IMAGE] (rill-snapshotter's recent decisions), status, pull.
//
// Registry flags, accepted by every command: --plain-http, --insecure, --hosts-dir (containerd's
// certs.d, default /etc/containerd/certs.d), --docker-config (credentials, default
// ~/.docker/config.json), --debug.
//
// Exit codes tell failures apart for scripts (see exitcode.go): 0 success (also when the
// artifact already existed), 1 other errors, 2 usage or an unparsable reference, 3 not found,
// 4 unauthorized or forbidden, 5 unsupported platform or no supported platform in an index,
// 6 unsupported media type, 7 the image is itself a streaming artifact, 8 not a runnable
// image, 9 corrupt content or failed verification, 10 the tag moved while rill worked, 11 no
// watcher answers (rill create --no-wait, rill operation).
//
// Progress goes to stderr: on a terminal one bar per layer redrawn in place (progress.go),
// elsewhere one plain line per layer and step; results go to stdout. With --no-wait, create
// hands the work to rill watch and prints the operation's ID alone on stdout.
package main
