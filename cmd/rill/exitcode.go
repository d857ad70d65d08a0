package main

import (
	"errors"
	"flag"

	"github.com/containerd/errdefs"

	"github.com/rillstream/rill/convert"
)

// Exit codes, one per kind of failure an operator or a script reacts to differently.
const (
	exitOK                  = 0
	exitError               = 1
	exitUsage               = 2 // bad flags, arguments, or an unparsable reference
	exitNotFound            = 3
	exitUnauthorized        = 4
	exitUnsupportedPlatform = 5 // the image's platform, or none of an index's, is streamed
	exitUnsupportedMedia    = 6
	exitIsStreaming         = 7 // the image is itself a streaming artifact (or eStargz)
	exitNotRunnable         = 8
	exitCorrupt             = 9  // content does not match its digest; verify failed
	exitConflict            = 10 // the tag moved while rill worked on it
	exitUnavailable         = 11 // a service rill needs does not answer (rill watch's API)
	exitUnstreamable        = 12 // a layer no node would stream (the entry is named)
)

// exitCode maps an error to its exit code. The package's own kinds come first: each also
// wraps a broader errdefs kind.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp), errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, convert.ErrUnsupportedPlatform), errors.Is(err, convert.ErrNoSupportedPlatform):
		return exitUnsupportedPlatform
	case errors.Is(err, convert.ErrUnsupportedMediaType):
		return exitUnsupportedMedia
	case errors.Is(err, convert.ErrIsStreamingArtifact):
		return exitIsStreaming
	case errors.Is(err, convert.ErrNotRunnable):
		return exitNotRunnable
	case errors.Is(err, convert.ErrUnstreamableLayer):
		return exitUnstreamable
	case errors.Is(err, convert.ErrCorruptLayer), errors.Is(err, convert.ErrVerifyFailed), errdefs.IsDataLoss(err):
		return exitCorrupt
	case errors.Is(err, convert.ErrTagMoved):
		return exitConflict
	case errdefs.IsUnavailable(err):
		return exitUnavailable
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		return exitUnauthorized
	case errdefs.IsNotFound(err):
		return exitNotFound
	case errdefs.IsInvalidArgument(err):
		return exitUsage
	}
	return exitError
}

// errUsage marks a usage error (the message says what is wrong).
var errUsage = errors.New("usage")
