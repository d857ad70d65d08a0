package convert

import (
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// Kinds of errors an operator must tell apart. Each wraps the errdefs kind that fits it, so
// callers may test either (errors.Is(err, ErrUnsupportedPlatform) or errdefs.IsNotImplemented).
var (
	// ErrUnsupportedPlatform: the image's platform is not one of the streaming platforms.
	ErrUnsupportedPlatform = kind("the image's platform is not one of the streaming platforms", errdefs.ErrFailedPrecondition)
	// ErrNoSupportedPlatform: no manifest of the index has a streaming platform.
	ErrNoSupportedPlatform = kind("no manifest of the index has one of the streaming platforms", errdefs.ErrFailedPrecondition)
	// ErrUnsupportedMediaType: a manifest or layer of a kind rill cannot convert (zstd,
	// encrypted or foreign layers, schema 1 manifests, artifacts of other tools).
	ErrUnsupportedMediaType = kind("unsupported media type", errdefs.ErrNotImplemented)
	// ErrIsStreamingArtifact: the image named is itself a streaming artifact (or already
	// eStargz), not an image to convert.
	ErrIsStreamingArtifact = kind("the image is itself a streaming artifact", errdefs.ErrInvalidArgument)
	// ErrNotRunnable: the manifest is no runnable container image (its config is not an image
	// config, or its diff_ids do not match its layers).
	ErrNotRunnable = kind("the image is not a runnable container image", errdefs.ErrInvalidArgument)
	// ErrUnstreamableLayer: a layer no node would stream (an entry outside the layer, a file
	// written through a symbolic link, a name no TOC can hold): rill does not convert it.
	ErrUnstreamableLayer = kind("the layer cannot be streamed", errdefs.ErrNotImplemented)
	// ErrCorruptLayer: a layer's bytes do not match its digest or the config's diff_id.
	ErrCorruptLayer = kind("corrupt layer", errdefs.ErrDataLoss)
	// ErrVerifyFailed: rill verify found an artifact that does not stream its image
	// faithfully.
	ErrVerifyFailed = kind("verification failed", errdefs.ErrDataLoss)
	// ErrTagMoved: the tag changed while rill worked on it; nothing was bound.
	ErrTagMoved = kind("the tag was moved while the artifact was built", errdefs.ErrConflict)
)

// kindError is a sentinel that also matches its errdefs kind.
type kindError struct {
	msg  string
	base error
}

func kind(msg string, base error) error { return &kindError{msg: msg, base: base} }

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.base }

var _ error = (*kindError)(nil)

// authError makes an authentication failure that remote reports without an errdefs kind
// (containerd's authorizer refusing to answer a challenge without credentials) an
// Unauthenticated error, so callers need one test for "unauthorized".
func authError(err error) error {
	if err != nil && errors.Is(err, docker.ErrInvalidAuthorization) && !errdefs.IsUnauthorized(err) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnauthenticated)
	}
	return err
}
