package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	rillfs "github.com/rillstream/rill/fs"
)

// startBackground makes the layer complete in the background and handles the verdict: a layer
// that does not decompress to the original raises the alarm — logged, counted, and its blob
// never streamed again. A fetch that fails for any other reason resumes after a backoff, for
// as long as the layer is mounted: an outage of the registry only delays the layer.
func (s *Snapshotter) startBackground(ml *mountedLayer, original *rillfs.Original) {
	if !s.background || ml.cache == nil {
		return
	}
	ml.setBackground("waiting", nil)
	go func() {
		entry := log.L.WithField("blob", ml.blob.String()).WithField("ref", ml.ref)
		if !sleepUnlessDone(ml.mounted.Done(), s.backgroundDelay) {
			ml.setBackground("stopped", nil)
			return
		}
		wait := s.retryFirst
		failures := 0
		for {
			ml.setBackground("running", nil)
			err := ml.mounted.Complete(original)
			switch {
			case err == nil || errors.Is(err, rillfs.ErrLayerMismatch) || errors.Is(err, context.Canceled):
				if failures > 0 && err == nil {
					entry.WithField("retries", failures).Info("background fetch of a streamed layer resumed and completed")
				}
				s.backgroundVerdict(ml, entry, original, err)
				return
			}
			failures++
			d := jitter(wait)
			ml.setRetry(err, time.Now().Add(d))
			s.metrics.backgroundRetries.Inc()
			e := entry.WithError(err).WithField("attempt", failures).WithField("retry_in", d.Round(time.Millisecond))
			if failures == 1 {
				e.Warn("streamed layer not made complete in the background; resuming after a backoff while it is mounted")
			} else {
				e.Debug("background fetch failed again")
			}
			if !sleepUnlessDone(ml.mounted.Done(), d) {
				ml.setBackground("stopped", nil)
				return
			}
			wait = min(2*wait, s.retryMax)
		}
	}()
}

// backgroundVerdict records how the background fetch of a layer ended.
func (s *Snapshotter) backgroundVerdict(ml *mountedLayer, entry *log.Entry, original *rillfs.Original, err error) {
	switch {
	case err == nil && original != nil:
		ml.setDone("verified")
		s.metrics.verifications.WithLabelValues("ok").Inc()
	case err == nil:
		ml.setDone("complete")
	case errors.Is(err, rillfs.ErrLayerMismatch):
		s.failed.add(ml.blob)
		ml.setBackground("mismatch", err)
		entry.WithError(err).Error("ALARM: a streamed layer does not match the original image layer; its streaming artifact is no longer used (recreate it with rill create --force, and find out who pushed it)")
		s.metrics.verifications.WithLabelValues("mismatch").Inc()
	default: // canceled: unmounted
		ml.setBackground("stopped", nil)
	}
}

// sleepUnlessDone waits d, or until done is closed (then false).
func sleepUnlessDone(done <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// jitter spreads d by ±20%, so that layers that failed together do not retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d - d/5 + rand.N(2*d/5+1)
}

// failedLayers are layer blobs that failed verification against their original: they are
// never streamed again. Kept in root/failed-layers.json across restarts.
type failedLayers struct {
	path  string
	mu    sync.Mutex
	blobs map[digest.Digest]bool
}

func loadFailedLayers(root string) *failedLayers {
	f := &failedLayers{path: filepath.Join(root, "failed-layers.json"), blobs: map[digest.Digest]bool{}}
	data, err := os.ReadFile(f.path)
	if err == nil {
		var list []digest.Digest
		if json.Unmarshal(data, &list) == nil {
			for _, d := range list {
				f.blobs[d] = true
			}
		}
	}
	return f
}

func (f *failedLayers) has(d digest.Digest) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blobs[d]
}

func (f *failedLayers) add(d digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[d] = true
	list := make([]digest.Digest, 0, len(f.blobs))
	for b := range f.blobs {
		list = append(list, b)
	}
	data, _ := json.Marshal(list)
	if err := writeFileAtomic(f.path, data); err != nil {
		log.L.WithError(err).Error("cannot record a failed layer; it may be streamed again after a restart")
	}
}
