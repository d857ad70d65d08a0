// Package convert builds rill's streaming artifacts. This file set holds the layer converter:
// it turns an image layer (gzip or plain tar) into a byte-preserving eStargz layer — the
// contract in docs/formats.md: decompressed, the new layer is the original tar's exact bytes
// followed by the eStargz TOC entry and footer, with gzip members cut at entry and chunk
// boundaries so the TOC addresses every file and chunk — and verifies a converted layer
// against the original's diff_id.
//
// Building and pushing whole artifacts (manifests, binding, referrers) comes with the rill
// CLI and builds on this.
package convert
