// Package artifact is the streaming-artifact contract that both sides of rill share: the
// writer (convert/, behind the rill CLI) and the reader (snapshotter/, on the node). It holds
// the artifact type, the format name and version, every annotation name of the contract, and
// the encoding of the prefetch profile. docs/formats.md describes the format; this package is
// its only definition in code, so the two sides cannot drift apart.
//
// It imports only the standard library and the OCI image spec.
package artifact
