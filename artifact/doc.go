// Package artifact is the streaming-artifact contract that both sides of rill share: the
// writer (convert/, behind the rill CLI) and the reader (snapshotter/, on the node). It holds
// the artifact type, the format name and version, every annotation name of the contract, the
// encoding of the prefetch profile, the TOC with rill's extension fields, and the rules: which
// TOC a node accepts and the tree it serves from it (NewTree), and how a TOC's metadata is
// checked against the tar it describes. docs/formats.md describes the format; this package is
// its only definition in code, so the two sides cannot drift apart.
//
// It imports only the standard library, the OCI image spec and the estargz format.
package artifact
