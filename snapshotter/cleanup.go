package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func (s *Snapshotter) snapshotsDir() string { return filepath.Join(s.root, "snapshots") }

// cleanup deletes every snapshot directory that the metastore no longer knows.
func (s *Snapshotter) cleanup(ctx context.Context) error {
	orphans, err := s.orphanDirs(ctx)
	if err != nil {
		return err
	}
	var firstErr error
	for _, dir := range orphans {
		if ml := s.remote.take(filepath.Base(dir)); ml != nil {
			uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := ml.unmount(uctx)
			cancel()
			if err != nil {
				log.G(ctx).WithError(err).WithField("path", dir).Warn("unmount streamed layer; detaching it")
			}
			s.forgetCachedLayer(ctx, ml.blob)
			s.removed(ctx, filepath.Base(dir), ml)
		}
		if err := removeSnapshotDir(dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("cannot remove snapshot directory; next cleanup retries")
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return firstErr
}

// removeOrphans is cleanup for callers that cannot report an error.
func (s *Snapshotter) removeOrphans(ctx context.Context) {
	if err := s.cleanup(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("snapshot directory cleanup incomplete")
	}
}

// orphanDirs lists the snapshot directories without a snapshot. It holds a write transaction
// while it looks, so no snapshot is being created at the same time (creation makes its
// directory inside a write transaction).
func (s *Snapshotter) orphanDirs(ctx context.Context) ([]string, error) {
	var orphans []string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if errdefs.IsNotFound(err) {
			ids = map[string]string{} // a new metastore: no snapshots yet
		} else if err != nil {
			return fmt.Errorf("list snapshot ids: %w", err)
		}
		entries, err := os.ReadDir(s.snapshotsDir())
		if err != nil {
			return fmt.Errorf("list snapshot directories: %w", err)
		}
		for _, e := range entries {
			if _, ok := ids[e.Name()]; !ok {
				orphans = append(orphans, filepath.Join(s.snapshotsDir(), e.Name()))
			}
		}
		return nil
	})
	return orphans, err
}

// removeSnapshotDir unmounts whatever is mounted inside dir (deepest first) and deletes it.
// Deleting through a live mount would delete the mounted content instead, or fail half-way.
func removeSnapshotDir(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return fmt.Errorf("read mount table: %w", err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}
