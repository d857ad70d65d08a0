package snapshotter

import (
	"sort"

	"github.com/rillstream/rill/snapshotter/status"
)

// LayerStatus is the state of one streamed layer (the end-to-end tests name it here).
type LayerStatus = status.Layer

// Status lists the streamed layers, oldest first.
func (s *Snapshotter) Status() []status.Layer {
	s.remote.mu.Lock()
	defer s.remote.mu.Unlock()
	out := make([]status.Layer, 0, len(s.remote.mounts))
	for id, ml := range s.remote.mounts {
		st := status.Layer{Snapshot: id, Image: ml.image, Ref: ml.ref, Blob: ml.blob, Reason: ml.reason, Mounted: ml.since, Bytes: ml.bytes, Unavailable: ml.blob == ""}
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

// Node returns the node's streaming state.
func (s *Snapshotter) Node() status.Node {
	st := status.Node{UnhealthyHosts: s.Hosts()}
	if s.cache != nil {
		st.CacheDiskFullSince = s.cache.DiskFullSince()
	}
	return st
}

// Hosts lists the registry hosts that failed a Prepare and are skipped for now.
func (s *Snapshotter) Hosts() []status.Host {
	if s.health == nil {
		return []status.Host{}
	}
	return s.health.status()
}
