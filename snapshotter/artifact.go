package snapshotter

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
)

// The streaming-artifact contract as the node reads it (docs/formats.md; the writer side is
// convert/). Repeated here so that the node side does not depend on the converter.
const (
	artifactType = "application/vnd.rill.streaming.v1"
	// annotationBinding, on a platform manifest's descriptor in the index at a tag, names the
	// digest of that manifest's streaming artifact.
	annotationBinding = "dev.rill.streaming.v1.manifest"
	// annotationOriginalDigest, on an artifact layer, names the original layer it converts.
	annotationOriginalDigest = "dev.rill.streaming.v1.original.digest"
	// annotationOriginalDiffID and annotationOriginalSize, on an artifact layer, are the
	// original's diff_id and tar length: what the layer must decompress to.
	annotationOriginalDiffID = "dev.rill.streaming.v1.original.diffid"
	annotationOriginalSize   = "dev.rill.streaming.v1.original.uncompressed-size"
	// annotationTOCDigest is the eStargz TOC digest of a layer.
	annotationTOCDigest = labelTOCDigest
	// annotationPrefetch, on the artifact, is its prefetch profile: a base64, gzipped JSON
	// array of paths in first-access order.
	annotationPrefetch = "dev.rill.streaming.v1.prefetch"
	// maxProfileBytes bounds a decoded prefetch profile.
	maxProfileBytes = 16 << 20
)

// decodeProfile decodes an artifact's prefetch profile.
func decodeProfile(encoded string) ([]string, error) {
	z, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("prefetch profile: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, fmt.Errorf("prefetch profile: %w", err)
	}
	js, err := io.ReadAll(io.LimitReader(zr, maxProfileBytes))
	if err != nil {
		return nil, fmt.Errorf("prefetch profile: %w", err)
	}
	var paths []string
	if err := json.Unmarshal(js, &paths); err != nil {
		return nil, fmt.Errorf("prefetch profile: %w", err)
	}
	return paths, nil
}

// Reasons a layer streams.
const (
	reasonEStargz  = "estargz"
	reasonBound    = "bound-artifact"
	reasonReferrer = "referrer"
)
