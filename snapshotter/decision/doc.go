// Package decision is the node's stream-or-full-pull decision for one image layer, as a pure
// function of what the registry said (Facts), the layer containerd prepares, and the node's
// Policy: Decide gives the blob to stream and the reason, or the reason of a full pull. The
// reasons are those of package snapshotter/status.
//
// Gathering the facts (the round trips) is the resolver's (snapshotter/resolve.go); the rules
// of the artifact contract are package artifact's. Neither FUSE nor the metastore is linked
// here, so the CLI can apply the node's rules too.
package decision
