// Package convert builds rill's streaming artifacts and keeps them in the registry beside the
// images they stream.
//
// # Layers
//
// ConvertLayer turns an image layer (gzip or plain tar) into a byte-preserving eStargz layer —
// the contract in docs/formats.md: decompressed, the new layer is the original tar's exact bytes
// followed by the eStargz TOC entry and footer, with gzip members cut at entry and chunk
// boundaries so the TOC addresses every file and chunk — and VerifyLayer checks a converted
// layer against the original's diff_id.
//
// # Artifacts
//
// For an image manifest M (one platform), its streaming artifact S is an OCI image manifest
// with subject = M, artifactType = artifact.ArtifactType, a runnable config (M's, with the
// diff_ids of S's layers), M's layers converted in order (each annotated as Layer.Annotations
// says), and the annotations format, version, platform, chunk size, created and, when given,
// the prefetch profile. Those names and the profile's encoding are the contract with the node,
// defined once in package artifact (github.com/rillstream/rill/artifact), which also says why
// the profile lives in the manifest.
//
// # Binding
//
// Converter.Create binds S to the tag: it pushes at the tag an index listing the same platform
// manifests with unchanged digests, M's descriptor annotated
// artifact.AnnotationBinding=<digest of S>, and S itself (so that garbage collection keeps it)
// under the platform unknown/unknown, which no node selects, annotated with
// artifact.AnnotationSubject. The index records what the tag named before
// (artifact.AnnotationBoundFrom), so that deleting the artifacts puts it back. The binding is
// pushed only if the tag still names what was converted. Images named by digest get
// referrers only.
//
// # Finding, choosing, deleting
//
// S is found from M's digest through the referrers API or its tag-schema fallback, and through
// the tag's binding. When several match, every reader chooses the same: a usable one (subject,
// type and layers match M), bound before referrer-only, newest created, lowest digest.
// Converter.Show lists them, Converter.Verify downloads and audits them, Converter.Delete deletes
// the image with its artifacts (or only the artifacts, unbinding the tag first).
package convert
