package snapshotter

import (
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// LayerStatus is the state of one streamed layer, as `rill status` shows it.
type LayerStatus struct {
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

// Status lists the streamed layers, oldest first.
func (s *Snapshotter) Status() []LayerStatus {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	out := make([]LayerStatus, 0, len(s.remote.mounts))
	for id, ml := range s.remote.mounts {
		st := LayerStatus{Snapshot: id, Image: ml.image, Ref: ml.ref, Blob: ml.blob, Reason: ml.reason, Mounted: ml.since, Bytes: ml.bytes, Unavailable: ml.blob == ""}
		if ml.cache != nil {
			st.CacheBytes = ml.cache.Usage()
			st.LocalBytes = min(ml.mounted.LocalBytes(), st.Bytes)
		}
		st.PrefetchDone = true
		if done := ml.mounted.PrefetchDone(); done != nil {
			select {
			case <-done:
			default:
				st.PrefetchDone = false
			}
		}
		ml.mu.Lock()
		st.Background, st.LastError, st.Retries, st.NextRetry = ml.background, ml.lastErr, ml.retries, ml.nextRetry
		ml.mu.Unlock()
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Mounted.Equal(out[j].Mounted) {
			return out[i].Mounted.Before(out[j].Mounted)
		}
		return out[i].Snapshot < out[j].Snapshot
	})
	return out
}

// NodeStatus is the state of the node's streaming beyond its layers, as `rill status` shows it.
type NodeStatus struct {
	// UnhealthyHosts are registry hosts that failed a Prepare: their layers are pulled in full.
	UnhealthyHosts []HostStatus `json:"unhealthyHosts"`
	// CacheDiskFullSince is set while writes to the cache meet a full disk.
	CacheDiskFullSince time.Time `json:"cacheDiskFullSince,omitzero"`
}

// Node returns the node's streaming state.
func (s *Snapshotter) Node() NodeStatus {
	st := NodeStatus{UnhealthyHosts: s.Hosts()}
	if s.cache != nil {
		st.CacheDiskFullSince = s.cache.DiskFullSince()
	}
	return st
}

// Hosts lists the registry hosts that failed a Prepare and are skipped for now.
func (s *Snapshotter) Hosts() []HostStatus {
	if s.health == nil {
		return []HostStatus{}
	}
	return s.health.status()
}
