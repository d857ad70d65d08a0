package artifact

import (
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// A node that recorded an image's prefetch profile reports it to the fleet's watcher (rill
// watch): POST ProfileReportPath with a bearer token and a JSON ProfileReport body of at most
// MaxProfileReportSize bytes. The watcher merges the reports of several nodes for one
// artifact and publishes the result as the artifact's profile (see docs/formats.md).

// ProfileReportPath is the path of the watcher's profile endpoint.
const ProfileReportPath = "/v1/profiles"

// MaxProfileReportSize bounds a report's body.
const MaxProfileReportSize = 4 << 20

// MaxProfilePaths bounds the paths of a profile: a report with more is refused by the
// watcher, and a node prefetches no more than the first MaxProfilePaths of an artifact's
// profile (a thousand is typical; this is far beyond any service's start).
const MaxProfilePaths = 64 << 10

// MaxPrefetchBytes bounds the bytes of file data a profile may make a node prefetch, per
// layer on the node, and for the whole profile in the watcher: paths past the budget (in the
// profile's order) are left out, so that a hostile profile naming every large file costs at
// most this much of the link.
const MaxPrefetchBytes = 1 << 30

// ProfileReport is what a node sends.
type ProfileReport struct {
	// Artifact is the digest of the streaming artifact the image streamed from.
	Artifact digest.Digest `json:"artifact"`
	// Image is the reference the node pulled (a tag, as containerd's CRI labels name it).
	Image string `json:"image"`
	// Node names the reporting node.
	Node string `json:"node"`
	// WindowSeconds is how long after the mount first opens were recorded.
	WindowSeconds float64 `json:"windowSeconds"`
	// Recorded is when the profile was written.
	Recorded time.Time `json:"recorded"`
	// Paths are the files first opened, in first-access order.
	Paths []string `json:"paths"`
}

// Check validates r and normalizes its paths with the rules of ParseProfile.
func (r *ProfileReport) Check() error {
	if err := r.Artifact.Validate(); err != nil {
		return fmt.Errorf("artifact digest %q: %w", r.Artifact, err)
	}
	if r.Image == "" {
		return errors.New("no image reference")
	}
	if r.Node == "" || len(r.Node) > 253 {
		return errors.New("the node name must be 1 to 253 bytes")
	}
	if len(r.Paths) > MaxProfilePaths {
		return fmt.Errorf("%d paths; at most %d are accepted", len(r.Paths), MaxProfilePaths)
	}
	paths, err := NormalizeProfile(r.Paths)
	if err != nil {
		return err
	}
	r.Paths = paths
	return nil
}
