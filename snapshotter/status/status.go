package status

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// The paths of the status socket; each answers GET with JSON.
const (
	// PathLayers returns a JSON array of Layer.
	PathLayers = "/v1/layers"
	// PathNode returns a Node.
	PathNode = "/v1/node"
	// PathDecisions returns a JSON array of Decision, oldest first.
	PathDecisions = "/v1/decisions"
)

// Layer is the state of one streamed layer, as `rill status` shows it.
type Layer struct {
	Snapshot string        `json:"snapshot"` // the snapshot's directory id
	Image    string        `json:"image"`    // the image reference pulled (empty for layers streamed before rill recorded it)
	Ref      string        `json:"ref"`      // where the blob is fetched from (repository@blob digest)
	Blob     digest.Digest `json:"blob"`
	Reason   string        `json:"reason"` // why it streams
	Mounted  time.Time     `json:"mounted"`
	// Bytes is the size of the layer's files; LocalBytes how much of it the cache holds (never
	// more than Bytes); CacheBytes what the layer takes on disk in the cache (4 KiB blocks,
	// and the tar headers kept to verify the layer).
	Bytes      int64 `json:"bytes"`
	LocalBytes int64 `json:"localBytes"`
	CacheBytes int64 `json:"cacheBytes"`
	// PrefetchDone is set once the layer's prefetch (if any) has ended.
	PrefetchDone bool `json:"prefetchDone"`
	// Background is off, waiting (its delay), running, incomplete (a fetch failed: it
	// resumes at NextRetry), complete, verified, mismatch (the alarm) or stopped.
	Background string `json:"background"`
	// Retries counts background fetches that failed and were resumed.
	Retries   int       `json:"retries,omitempty"`
	NextRetry time.Time `json:"nextRetry,omitzero"`
	LastError string    `json:"lastError,omitempty"`
	// Unavailable is set for a layer that could not be restored (reads fail).
	Unavailable bool `json:"unavailable,omitempty"`
}

// Node is the state of the node's streaming beyond its layers, as `rill status` shows it.
type Node struct {
	// UnhealthyHosts are registry hosts that failed a Prepare: their layers are pulled in full.
	UnhealthyHosts []Host `json:"unhealthyHosts"`
	// CacheDiskFullSince is set while writes to the cache meet a full disk.
	CacheDiskFullSince time.Time `json:"cacheDiskFullSince,omitzero"`
}

// Host is a registry host that failed a Prepare, as `rill status` shows it.
type Host struct {
	Host      string    `json:"host"`
	Since     time.Time `json:"since"`
	Until     time.Time `json:"until"` // Prepares pull in full until then; the next one after it tries again
	LastError string    `json:"lastError"`
}

// Decision is one stream-or-full-pull decision for an image layer, as `rill why` shows it.
type Decision struct {
	Time     time.Time     `json:"time"`
	ImageRef string        `json:"imageRef"`
	Manifest digest.Digest `json:"manifest,omitempty"`
	Layer    digest.Digest `json:"layer,omitempty"`
	// Result is ResultStream or ResultFallback (pulled in full).
	Result string `json:"result"`
	// Reason is one of the Reason constants (reasons.go).
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"`
}

// Results of a decision.
const (
	ResultStream   = "stream"
	ResultFallback = "fallback"
)
