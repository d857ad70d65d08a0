package status

import "strings"

// Why a layer streams. A node's metrics, log, `rill status` and `rill why` name these.
const (
	// ReasonEStargz: the layer is eStargz, its TOC digest in the image's own manifest.
	ReasonEStargz = "estargz"
	// ReasonBound: the pulled reference binds a streaming artifact to the image.
	ReasonBound = "bound-artifact"
	// ReasonReferrer: a streaming artifact attached as a referrer (streaming.trust = referrers).
	ReasonReferrer = "referrer"
	// ReasonShared: another containerd namespace streamed the same layer already.
	ReasonShared = "shared"
)

// Why a layer is pulled in full: the image's facts (decided without fault).
const (
	ReasonStreamingDisabled  = "streaming-disabled"
	ReasonBadLabels          = "bad-labels"
	ReasonNoPlatformInIndex  = "no-streaming-platform-in-index"
	ReasonManifestNotInIndex = "manifest-not-in-index"
	ReasonReferenceMoved     = "reference-moved"
	ReasonLayerNotInManifest = "layer-not-in-manifest"
	ReasonBadTOCAnnotation   = "bad-toc-annotation"
	ReasonBoundInvalid       = "bound-artifact-invalid"
	ReasonNoBound            = "no-bound-artifact"
	ReasonNoArtifact         = "no-artifact"
)

// Why a layer is pulled in full: a failure on the streaming path (fail open).
const (
	ReasonResolveError       = "resolve-error"
	ReasonReferrersError     = "referrers-error"
	ReasonHostUnhealthy      = "host-unhealthy"
	ReasonTOCFetchError      = "toc-fetch-error"
	ReasonTOCInvalid         = "toc-invalid"
	ReasonVerificationFailed = "verification-failed"
	ReasonInternalError      = "internal-error"
	ReasonMountError         = "mount-error"
	ReasonCommitError        = "commit-error"
)

// platformPrefix starts the reason of an image whose platform does not stream.
const platformPrefix = "platform "

// ReasonPlatform is the reason of an image of platform p (os/arch[/variant]), which is not
// among the node's streaming platforms.
func ReasonPlatform(p string) string { return platformPrefix + p }

// IsPlatformReason reports whether reason is a ReasonPlatform.
func IsPlatformReason(reason string) bool { return strings.HasPrefix(reason, platformPrefix) }
