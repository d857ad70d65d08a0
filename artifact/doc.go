// Package artifact is the streaming-artifact contract that both sides of rill share: the
// writer (convert/, behind the rill CLI) and the reader (snapshotter/, on the node). It holds
// the artifact type, the format name and version, every annotation name of the contract, the
// encoding and file of the prefetch profile, the TOC with rill's extension fields, and the
// rules: which TOC a node accepts and the tree it serves from it (NewTree), how a TOC's
// metadata is checked against the tar it describes, and (rules.go) which media types are
// indexes and manifests, whether an artifact streams an image manifest of a platform
// (Streams), and the order of choice among several artifacts (Before). docs/formats.md describes the format; this package is
// its only definition in code, so the two sides cannot drift apart.
//
// It imports only the standard library, the OCI image spec and the estargz format.
package artifact
