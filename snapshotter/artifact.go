package snapshotter

// The streaming-artifact contract as the node reads it (docs/formats.md; the writer side is
// convert/). Repeated here so that the node side does not depend on the converter.
const (
	artifactType = "application/vnd.rill.streaming.v1"
	// annotationBinding, on a platform manifest's descriptor in the index at a tag, names the
	// digest of that manifest's streaming artifact.
	annotationBinding = "dev.rill.streaming.v1.manifest"
	// annotationOriginalDigest, on an artifact layer, names the original layer it converts.
	annotationOriginalDigest = "dev.rill.streaming.v1.original.digest"
	// annotationTOCDigest is the eStargz TOC digest of a layer.
	annotationTOCDigest = labelTOCDigest
)

// Reasons a layer streams.
const (
	reasonEStargz  = "estargz"
	reasonBound    = "bound-artifact"
	reasonReferrer = "referrer"
)
