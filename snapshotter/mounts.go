package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/fdstore"
	rillfs "github.com/rillstream/rill/fs"
)

// mountedLayer is a streamed layer served through FUSE, with its cache handle.
type mountedLayer struct {
	mounted *rillfs.Mounted
	cache   *cache.Layer // nil without a cache
	blob    digest.Digest
	ref     string // the blob's repository@digest
	image   string // the image reference pulled
	reason  string
	since   time.Time
	bytes   int64 // of the layer's files
	// kept keeps the layer's FUSE connection under fdName (nil: not kept).
	kept   fdstore.Store
	fdName string

	mu         sync.Mutex
	background string // off, waiting, running, incomplete (to be retried), complete, verified, mismatch, stopped
	lastErr    string
	retries    int       // background fetches that failed and were retried
	nextRetry  time.Time // when the background fetch resumes (state incomplete)
}

func (ml *mountedLayer) setBackground(state string, err error) {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	ml.background = state
	if err != nil {
		ml.lastErr = err.Error()
	}
}

// setRetry records a background fetch that failed and resumes at next.
func (ml *mountedLayer) setRetry(err error, next time.Time) {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	ml.background, ml.lastErr, ml.nextRetry = "incomplete", err.Error(), next
	ml.retries++
}

// setDone records a layer made complete: the errors on the way no longer matter.
func (ml *mountedLayer) setDone(state string) {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	ml.background, ml.lastErr, ml.nextRetry = state, "", time.Time{}
}

// fdName is the name under which the FUSE connection of snapshot id is kept.
func fdName(id string) string { return "layer-" + id }

// mountLayer mounts idx at mountpoint (the directory "fs" of the snapshot's directory, which
// keeps the connection's state), reading through the cache when there is one; a cache that
// cannot give a handle only costs fetches. With a kept connection (dev), the layer is served
// again on it (rillfs.Resume); without, it is mounted afresh and its connection kept.
func (s *Snapshotter) mountLayer(ctx context.Context, mountpoint string, idx *rillfs.Index, layer RemoteLayer, dev *os.File) (*mountedLayer, error) {
	opts := s.fsMount
	opts.Log = log.L.WithField("blob", layer.Desc.Digest.String()).WithField("ref", layer.Ref)
	opts.RecordWindow = s.recordWindow
	opts.StateDir = filepath.Dir(mountpoint)
	id := filepath.Base(opts.StateDir)
	ml := &mountedLayer{blob: layer.Desc.Digest, ref: layer.Ref, image: layer.Image, reason: layer.Reason, since: time.Now().UTC(), bytes: idx.Bytes, background: "off"}
	if s.cache != nil {
		h, err := s.cache.Layer(ctx, layer.Desc.Digest)
		if err != nil {
			opts.Log.WithError(err).Warn("streamed layer served without the cache")
		} else {
			ml.cache, opts.Cache = h, h
		}
	}
	var m *rillfs.Mounted
	var err error
	if dev != nil {
		m, err = rillfs.Resume(ctx, dev, mountpoint, idx, layer.Blob, opts)
	} else {
		m, err = rillfs.Mount(ctx, mountpoint, idx, layer.Blob, opts)
	}
	if err != nil {
		if ml.cache != nil {
			ml.cache.Release()
		}
		return nil, err
	}
	ml.mounted = m
	if s.fds != nil {
		ml.kept, ml.fdName = s.fds, fdName(id)
		if dev == nil {
			if err := s.fds.Put(ctx, ml.fdName, m.Device()); err != nil {
				opts.Log.WithError(err).Warn("the layer's FUSE connection is not kept outside rill-snapshotter: containers using it lose its files when rill-snapshotter restarts")
				ml.kept = nil
			}
		}
	}
	return ml, nil
}

// handOver stops serving the layer in this process and leaves it mounted, its connection
// kept for the next process.
func (ml *mountedLayer) handOver() {
	ml.mounted.Stop()
	if ml.cache != nil {
		ml.cache.Release()
	}
}

// unmount stops serving the layer and lets go of its cache handle once nothing reads it.
func (ml *mountedLayer) unmount(ctx context.Context) error {
	err := ml.mounted.Unmount(ctx)
	if ml.kept != nil {
		if rerr := ml.kept.Remove(ctx, ml.fdName); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("name", ml.fdName).Warn("drop the kept FUSE connection of an unmounted layer")
		}
	}
	if ml.cache != nil {
		if err == nil {
			ml.cache.Release()
		} else {
			go func() { ml.mounted.Wait(); ml.cache.Release() }()
		}
	}
	return err
}

// LayerObserver hears when a streamed layer starts being served (mounted at a pull, or again
// at start) and when it is removed, with the reference its blob is read through: the daemon
// keeps the credentials of that repository for as long. A restart stops serving layers
// without removing them.
type LayerObserver interface {
	LayerServed(ctx context.Context, id, ref string)
	LayerRemoved(ctx context.Context, id, ref string)
}

func (s *Snapshotter) served(ctx context.Context, id string, ml *mountedLayer) {
	if s.observer != nil && ml.ref != "" {
		s.observer.LayerServed(ctx, id, ml.ref)
	}
}

func (s *Snapshotter) removed(ctx context.Context, id string, ml *mountedLayer) {
	if s.observer != nil && ml.ref != "" {
		s.observer.LayerRemoved(ctx, id, ml.ref)
	}
}

// remoteLayers tracks the streamed layers by snapshot id.
type remoteLayers struct {
	mu     sync.Mutex
	mounts map[string]*mountedLayer
	closed bool // by closeAll: the snapshotter is closing
}

// add tracks ml as layer id. Once the snapshotter is closing it unmounts ml instead (a layer
// recovered or mounted while Close runs must not outlive it) and reports false.
func (r *remoteLayers) add(id string, ml *mountedLayer) bool {
	r.mu.Lock()
	closed := r.closed
	if !closed {
		r.mounts[id] = ml
	}
	r.mu.Unlock()
	if closed {
		ctx, cancel := context.WithTimeout(context.Background(), closeUnmountWait)
		defer cancel()
		if err := ml.unmount(ctx); err != nil {
			log.L.WithError(err).WithField("id", id).Warn("unmount a streamed layer mounted while rill-snapshotter was stopping")
		}
	}
	return !closed
}

func (r *remoteLayers) get(id string) *mountedLayer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mounts[id]
}

func (r *remoteLayers) take(id string) *mountedLayer {
	r.mu.Lock()
	defer r.mu.Unlock()
	ml := r.mounts[id]
	delete(r.mounts, id)
	return ml
}

// closeAll returns every tracked layer and tracks no more: later adds unmount theirs.
func (r *remoteLayers) closeAll() map[string]*mountedLayer {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	all := r.mounts
	r.mounts = map[string]*mountedLayer{}
	return all
}

// available reports whether the snapshot id is a streamed layer that serves reads (mounted,
// and not in the unavailable form of a layer that could not be restored).
func (r *remoteLayers) available(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ml := r.mounts[id]
	return ml != nil && ml.blob != ""
}

// blobs returns the blob digests of the mounted layers.
func (r *remoteLayers) blobs() map[digest.Digest]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[digest.Digest]bool{}
	for _, ml := range r.mounts {
		out[ml.blob] = true
	}
	return out
}

// forgetCachedLayer frees the cached data of blob when no snapshot streams it any more.
func (s *Snapshotter) forgetCachedLayer(ctx context.Context, blob digest.Digest) {
	if s.cache == nil || blob == "" || s.remote.blobs()[blob] { // "": a layer never restored
		return
	}
	if err := s.cache.RemoveLayer(ctx, blob); err != nil {
		log.G(ctx).WithError(err).WithField("blob", blob.String()).Warn("cannot free the cached data of a removed layer")
	}
}

// retainCache frees the cached data of every layer that no snapshot streams (left by removals
// while the daemon was down).
func (s *Snapshotter) retainCache(ctx context.Context) {
	if s.cache == nil {
		return
	}
	if err := s.cache.Retain(ctx, s.remote.blobs()); err != nil {
		log.G(ctx).WithError(err).Warn("cache garbage collection at start")
	}
}

// closeUnmountWait bounds how long shutdown waits for each streamed layer's server to stop.
const closeUnmountWait = time.Second

// unmountAll unmounts every streamed layer, concurrently: at shutdown, layers still used by
// running containers are served until the process exits. Layers whose connection is kept are
// handed over instead: left mounted, served again by the next process.
func (s *Snapshotter) unmountAll() {
	var wg sync.WaitGroup
	for id, ml := range s.remote.closeAll() {
		if ml.kept != nil {
			wg.Go(ml.handOver)
			log.L.WithField("id", id).Debug("streamed layer handed over to the next rill-snapshotter")
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), closeUnmountWait)
			defer cancel()
			err := ml.unmount(ctx)
			switch {
			case errors.Is(err, rillfs.ErrInUse):
				// The process is about to exit: nothing serves the layer after that.
				log.L.WithField("id", id).WithField("blob", ml.blob.String()).Warn("streamed layer still used by running containers: rill-snapshotter is stopping, so their reads of the layer's files not yet in their page cache fail (ENOTCONN) from now on; restart those containers once rill-snapshotter runs again")
			case err != nil:
				log.L.WithError(err).WithField("id", id).Warn("unmount streamed layer")
			}
		})
	}
	wg.Wait()
}
