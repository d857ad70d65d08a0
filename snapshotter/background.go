package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	rillfs "github.com/rillstream/rill/fs"
)

// WithBackgroundFetch makes every streamed layer complete in the background (after its
// prefetch and delay, yielding to reads) and checks a streaming artifact's layer against the
// original. The delay keeps the background fetch off the link while a container starts: reads
// only wait for requests to start, not for bandwidth shared with a transfer in flight.
func WithBackgroundFetch(on bool, delay time.Duration) Opt {
	return func(s *settings) { s.background, s.backgroundDelay = on, delay }
}

// startBackground makes the layer complete in the background and handles the verdict: a layer
// that does not decompress to the original raises the alarm — logged, counted, and its blob
// never streamed again.
func (s *Snapshotter) startBackground(ml *mountedLayer, original *rillfs.Original) {
	if !s.background || ml.cache == nil {
		return
	}
	ml.setBackground("waiting", nil)
	go func() {
		entry := log.L.WithField("blob", ml.blob.String())
		select {
		case <-time.After(s.backgroundDelay):
		case <-ml.mounted.Done():
			ml.setBackground("stopped", nil)
			return
		}
		ml.setBackground("running", nil)
		err := ml.mounted.Complete(original)
		switch {
		case err == nil && original != nil:
			ml.setBackground("verified", nil)
			s.metrics.verifications.WithLabelValues("ok").Inc()
		case err == nil:
			ml.setBackground("complete", nil)
		case errors.Is(err, rillfs.ErrLayerMismatch):
			s.failed.add(ml.blob)
			ml.setBackground("mismatch", err)
			entry.WithError(err).Error("ALARM: a streamed layer does not match the original image layer; its streaming artifact is no longer used (recreate it with rill create --force, and find out who pushed it)")
			s.metrics.verifications.WithLabelValues("mismatch").Inc()
		case errors.Is(err, context.Canceled):
			ml.setBackground("stopped", nil)
		default:
			ml.setBackground("incomplete", err)
			s.metrics.verifications.WithLabelValues("incomplete").Inc()
			entry.WithError(err).Warn("streamed layer not made complete in the background")
		}
	}()
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
