package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/log"
	"github.com/rillstream/rill/snapshotter/status"
	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Snapshotter is rill's snapshots.Snapshotter. It is safe for concurrent use.
type Snapshotter struct {
	settings
	root    string
	ms      *storage.MetaStore
	overlay snapshots.Snapshotter

	// Streaming, when a resolver is set.
	loader    *layerLoader
	remote    *remoteLayers
	health    *hostHealth
	failed    *failedLayers
	recs      recordings
	decisions decisionLog

	// Recovery of layers restored unavailable: closing ends when Close begins; Close waits
	// for recovering.
	closing    context.Context
	beginClose context.CancelFunc
	recovering sync.WaitGroup
}

// errClosing is returned by what would mount a layer while the snapshotter closes.
var errClosing = errors.New("rill-snapshotter is stopping")

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// NewSnapshotter opens (or creates) the snapshotter state under root.
func NewSnapshotter(ctx context.Context, root string, opts ...Option) (*Snapshotter, error) {
	set := defaults()
	for _, o := range opts {
		o(&set)
	}
	set.retryMax = max(set.retryMax, set.retryFirst)
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("snapshotter root %q must be an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root: %w", err)
	}
	ms, err := openMetaStore(ctx, filepath.Join(root, "metadata.db"), set.lockTimeout)
	if err != nil {
		return nil, err
	}
	// The overlay snapshotter always removes asynchronously: rill deletes directories itself
	// (Cleanup) so it can unmount whatever is mounted in them first.
	ov, err := overlay.NewSnapshotter(root,
		overlay.WithMetaStore(ms),
		overlay.AsynchronousRemove,
		overlay.WithMountOptions(set.mountOptions),
	)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("overlay snapshotter on %s: %w", root, err)
	}
	if set.metrics == nil {
		set.metrics = NewMetrics()
	}
	sn := &Snapshotter{
		settings: set, root: root, ms: ms, overlay: ov,
		remote: &remoteLayers{mounts: map[string]*mountedLayer{}}, failed: loadFailedLayers(root),
		recs: recordings{reports: newReporter(root, set.profileSender, set.nodeName)},
	}
	sn.closing, sn.beginClose = context.WithCancel(context.Background())
	if sn.resolver != nil {
		sn.health = newHostHealth(set.unhealthyFor, sn.metrics)
		sn.loader = newLayerLoader(sn.resolver, sn.tocLimits, set.prepareTimeout, sn.health)
		sn.restore(ctx)
		sn.retainCache(ctx)
	} else {
		sn.dropKept(ctx)
	}
	return sn, nil
}

// openMetaStore opens the metadata store now (containerd's opens it at the first call), so that
// a store another process holds fails here, after lockTimeout, not in every call.
func openMetaStore(ctx context.Context, path string, lockTimeout time.Duration) (*storage.MetaStore, error) {
	ms, err := storage.NewMetaStore(path, func(o *bolt.Options) error {
		o.Timeout = lockTimeout
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", path, err)
	}
	_, tx, err := ms.TransactionContext(ctx, false)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open metadata store %s: another process holds it (another rill-snapshotter on the same root?) and did not let go within %s; stop it or use another root: %w", path, lockTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", path, err)
	}
	if err := tx.Rollback(); err != nil {
		ms.Close()
		return nil, fmt.Errorf("open metadata store %s: %w", path, err)
	}
	return ms, nil
}

// Root is the directory the snapshotter keeps its state in.
func (s *Snapshotter) Root() string { return s.root }

// Stat returns the info of an active or committed snapshot by key or name.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return s.overlay.Stat(ctx, key)
}

// Update changes the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return s.overlay.Update(ctx, info, fieldpaths...)
}

// Usage returns the disk usage of a snapshot.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return s.overlay.Usage(ctx, key)
}

// Mounts returns the mounts of an active snapshot or view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return s.overlay.Mounts(ctx, key)
}

// Prepare creates an active snapshot on top of parent. When containerd prepares it to unpack
// an image layer that streams, the layer is mounted and committed under its target instead,
// and Prepare answers AlreadyExists: containerd then skips the download. Any failure on that
// path falls back to the ordinary snapshot, into which containerd pulls the layer.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	mounts, err := s.overlay.Prepare(ctx, key, parent, opts...)
	if err != nil {
		return mounts, err
	}
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return mounts, nil
		}
	}
	layer, ok, err := ParseLayerLabels(info.Labels)
	if !ok && err == nil {
		return mounts, nil // not an image layer: nothing to decide
	}
	if s.resolver == nil {
		s.logDecision(layer, status.ResultFallback, status.ReasonStreamingDisabled, nil)
		return mounts, nil
	}
	entry := log.G(ctx).WithField("key", key)
	if err != nil {
		s.metrics.decision(status.ResultFallback, status.ReasonBadLabels)
		s.logDecision(layer, status.ResultFallback, status.ReasonBadLabels, err)
		entry.WithError(err).Warn("layer pulled in full: unreadable labels")
		return mounts, nil
	}
	entry = entry.WithFields(logrus.Fields{"ref": layer.ImageRef, "layer": layer.Layer.String()})
	if shared, err := s.shareStreamed(ctx, key, parent, layer.Target); err != nil {
		entry.WithError(err).Warn("cannot share the layer streamed for another namespace: deciding anew")
	} else if shared {
		s.metrics.decision(status.ResultStream, status.ReasonShared)
		entry.WithField("reason", status.ReasonShared).Info("layer streamed")
		return nil, alreadyStreamed(layer.Target)
	}
	reason, err := s.prepareStreamed(ctx, key, parent, layer, opts)
	if err != nil {
		s.metrics.decision(status.ResultFallback, reason)
		s.logDecision(layer, status.ResultFallback, reason, err)
		entry.WithError(err).WithField("reason", reason).Info("layer pulled in full")
		return mounts, nil
	}
	s.metrics.decision(status.ResultStream, reason)
	s.logDecision(layer, status.ResultStream, reason, nil)
	entry.WithField("reason", reason).Info("layer streamed")
	return nil, alreadyStreamed(layer.Target)
}

// View creates a read-only view of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.overlay.View(ctx, key, parent, opts...)
}

// Commit turns the active snapshot key into the committed snapshot name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.overlay.Commit(ctx, name, key, opts...)
}

// Remove deletes a snapshot. With asynchronous removal its directory goes at the next Cleanup;
// otherwise before Remove returns.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if err := s.overlay.Remove(ctx, key); err != nil {
		return err
	}
	if s.asyncRemove {
		return nil
	}
	// The metadata is gone already; a directory that cannot be deleted now is retried by the
	// next Cleanup, so it is logged, not returned.
	s.removeOrphans(ctx)
	return nil
}

// Walk calls fn for every snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.overlay.Walk(ctx, fn, filters...)
}

// Cleanup deletes the directories of removed snapshots.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	return s.cleanup(ctx)
}

// Close unmounts the streamed layers and closes the metastore. Closing twice is harmless.
func (s *Snapshotter) Close() error {
	s.writePendingProfiles()
	s.beginClose()
	s.unmountAll()
	s.recovering.Wait() // what a recovery still mounts is unmounted by remote.add
	err := s.overlay.Close()
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close metadata store: %w", err)
	}
	return nil
}
