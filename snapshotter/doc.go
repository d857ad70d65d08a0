// Package snapshotter implements containerd's snapshots.Snapshotter for rill: it streams the
// layers that package decision says stream (resolve.go gathers the facts, loader.go loads
// their TOCs ahead), mounts them through fs, and pulls every other layer in full. Its options
// are in options.go; what it reports is package status.
//
// Every layer that is not streamed takes the full-pull path: containerd downloads and unpacks
// it into an overlayfs snapshot. That path is containerd's own overlay snapshotter
// (plugins/snapshots/overlay), composed here over a metastore that rill owns, so the full pull
// is exactly as correct as containerd's and rill writes only what streaming adds.
//
// On-disk layout under the root directory:
//
//	metadata.db              containerd's bolt metastore (snapshot keys, parents, labels, ids)
//	snapshots/<id>/fs        a snapshot's directory: its diff (upperdir) or, once the
//	                         streaming path lands, the mountpoint of a streamed layer
//	snapshots/<id>/work      the overlayfs workdir of an active snapshot
//
// Because rill owns the metastore, a streamed layer can be committed from Prepare inside the
// same transactions (storage.CreateSnapshot, storage.CommitActive) and its directory replaced
// by a FUSE mountpoint; the overlay mounts computed for its children then point at that
// mountpoint like at any other lower directory. Before a snapshot directory is deleted,
// anything mounted inside it is unmounted first (see cleanup.go).
package snapshotter
