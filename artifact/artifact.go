package artifact

import ocispec "github.com/opencontainers/image-spec/specs-go/v1"

// The streaming artifact: an OCI image manifest whose subject is the image manifest it streams.
const (
	// ArtifactType is the artifactType of every streaming artifact manifest.
	ArtifactType = "application/vnd.rill.streaming.v1"
	// FormatName is the layer format of version 1 artifacts: byte-preserving eStargz.
	FormatName = "estargz-lossless"
	// FormatVersion is the version of the artifact layout.
	FormatVersion = "1"
)

// MaxChunkSize bounds the uncompressed size of one chunk of a layer: nodes refuse to stream a
// layer with larger chunks (each chunk is held in memory whole while it is fetched), so the
// converter refuses to write one.
const MaxChunkSize = 64 << 20

// Annotations of the artifact manifest.
const (
	// AnnotationFormat names the layer format of an artifact.
	AnnotationFormat = "dev.rill.streaming.v1.format"
	// AnnotationVersion is the version of the artifact layout.
	AnnotationVersion = "dev.rill.streaming.v1.version"
	// AnnotationPlatform is the platform (os/arch[/variant]) of the artifact's subject.
	AnnotationPlatform = "dev.rill.streaming.v1.platform"
	// AnnotationChunkSize is the chunk size the layers were converted with.
	AnnotationChunkSize = "dev.rill.streaming.v1.chunk-size"
	// AnnotationPrefetch holds the prefetch profile, encoded by EncodeProfile.
	AnnotationPrefetch = "dev.rill.streaming.v1.prefetch"
	// AnnotationCreated is when the artifact was built (RFC 3339, UTC).
	AnnotationCreated = ocispec.AnnotationCreated
)

// Annotations of the binding index pushed at a tag.
const (
	// AnnotationBinding, on a platform manifest's descriptor in the index at a tag, names
	// the digest of the streaming artifact bound to that manifest.
	AnnotationBinding = "dev.rill.streaming.v1.manifest"
	// AnnotationBoundFrom, on a binding index, is the digest of what the tag named before
	// it was bound (the original index, or the single platform manifest), so that
	// unbinding can restore it.
	AnnotationBoundFrom = "dev.rill.streaming.v1.bound-from"
	// AnnotationSubject, on an artifact's descriptor in the binding index, is the digest of
	// the platform manifest it streams.
	AnnotationSubject = "dev.rill.streaming.v1.subject"
)

// Annotations a converted layer carries in the streaming artifact's manifest.
const (
	// AnnotationTOCDigest is the digest of the layer's TOC JSON (the eStargz convention, read
	// by every eStargz-aware snapshotter). containerd passes it to snapshotters as a label of
	// the same name, because of its containerd.io/snapshot/ prefix.
	AnnotationTOCDigest = "containerd.io/snapshot/stargz/toc.digest"
	// AnnotationUncompressedSize is the uncompressed size of the whole eStargz layer.
	AnnotationUncompressedSize = "io.containers.estargz.uncompressed-size"
	// AnnotationOriginalDigest is the digest of the original (compressed) layer.
	AnnotationOriginalDigest = "dev.rill.streaming.v1.original.digest"
	// AnnotationOriginalDiffID is the original layer's diff_id: the sha256 of its tar bytes.
	AnnotationOriginalDiffID = "dev.rill.streaming.v1.original.diffid"
	// AnnotationOriginalSize is the length of the original's tar bytes: the prefix of the
	// decompressed eStargz layer that must hash to the original diff_id.
	AnnotationOriginalSize = "dev.rill.streaming.v1.original.uncompressed-size"
	// AnnotationTOCOffset is where the layer's TOC member starts in the blob (the offset its
	// footer records): with the blob's size, a node fetches the TOC and the footer in one
	// range request instead of the footer first. A hint only: the node checks it against the
	// footer, and the TOC against its digest (TOCOffsetHint).
	AnnotationTOCOffset = "dev.rill.streaming.v1.toc.offset"
)
