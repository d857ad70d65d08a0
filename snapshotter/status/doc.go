// Package status is what rill-snapshotter tells about itself on its status socket, in the
// JSON that `rill status` and `rill why` read: the streamed layers (Layer), the node's state
// (Node, Host), the recent stream-or-full-pull decisions (Decision) and the reasons they give.
//
// It imports only the standard library and go-digest, so that the CLI reads the daemon's
// answers without linking FUSE, the metastore or containerd's snapshotters.
package status
