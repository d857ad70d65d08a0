package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
)

// Opt changes one setting of the snapshotter.
type Opt func(*settings)

type settings struct {
	asyncRemove  bool
	mountOptions []string
}

// WithAsyncRemove makes Remove update only the metadata; the snapshot's directory is deleted
// by the next Cleanup (containerd's garbage collector calls it). Without it, Remove deletes
// the directory before it returns.
func WithAsyncRemove(async bool) Opt {
	return func(s *settings) { s.asyncRemove = async }
}

// WithMountOptions adds overlayfs mount options to every overlay mount.
func WithMountOptions(options []string) Opt {
	return func(s *settings) { s.mountOptions = append(s.mountOptions, options...) }
}

// Snapshotter is rill's snapshots.Snapshotter. It is safe for concurrent use.
type Snapshotter struct {
	root        string
	ms          *storage.MetaStore
	overlay     snapshots.Snapshotter
	asyncRemove bool
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// NewSnapshotter opens (or creates) the snapshotter state under root.
func NewSnapshotter(ctx context.Context, root string, opts ...Opt) (*Snapshotter, error) {
	var set settings
	for _, o := range opts {
		o(&set)
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("snapshotter root %q must be an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root: %w", err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", filepath.Join(root, "metadata.db"), err)
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
	return &Snapshotter{root: root, ms: ms, overlay: ov, asyncRemove: set.asyncRemove}, nil
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

// Prepare creates an active snapshot on top of parent.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.overlay.Prepare(ctx, key, parent, opts...)
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

// Close closes the metastore. Closing twice is harmless.
func (s *Snapshotter) Close() error {
	err := s.overlay.Close()
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close metadata store: %w", err)
	}
	return nil
}
