package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	rillfs "github.com/rillstream/rill/fs"
	"golang.org/x/sys/unix"
)

// restore mounts again every streamed layer committed before the daemon stopped, from what it
// kept on disk (the TOC and the layer record), without the network. A layer that cannot be
// restored is logged and counted, and its snapshot stays (reads of it fail); it never keeps
// the daemon from starting.
func (s *Snapshotter) restore(ctx context.Context) {
	type streamed struct{ id, name, parent string }
	var layers []streamed
	parents := map[string]string{} // every snapshot's parent, by name
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			parents[info.Name] = info.Parent
			if info.Kind != snapshots.KindCommitted || info.Labels[labelRemote] == "" {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			layers = append(layers, streamed{id: id, name: info.Name, parent: info.Parent})
			return nil
		})
	})
	if err != nil && !errdefs.IsNotFound(err) { // NotFound: a new metastore
		log.G(ctx).WithError(err).Error("cannot list streamed layers to restore")
		return
	}
	// Lower layers first: a layer's implied directories take their metadata from the layers
	// below it, which must be mounted to be read.
	depth := func(name string) int {
		n := 0
		for p := parents[name]; p != "" && n <= len(parents); p = parents[p] {
			n++
		}
		return n
	}
	sort.SliceStable(layers, func(i, j int) bool { return depth(layers[i].name) < depth(layers[j].name) })
	for _, l := range layers {
		entry := log.G(ctx).WithField("snapshot", l.name).WithField("id", l.id)
		if err := s.restoreLayer(ctx, l.id, l.parent); err != nil {
			s.metrics.restores.WithLabelValues("degraded").Inc()
			entry.WithError(err).Error("streamed layer not restored: reads of it fail (EIO) until its image is removed and pulled again")
			s.mountUnavailable(ctx, l.id)
			continue
		}
		s.metrics.restores.WithLabelValues("ok").Inc()
		entry.Info("streamed layer restored")
	}
}

func (s *Snapshotter) restoreLayer(ctx context.Context, id, parent string) error {
	dir := filepath.Join(s.snapshotsDir(), id)
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return fmt.Errorf("read layer record: %w", err)
	}
	var rec layerRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("decode layer record: %w", err)
	}
	tocJSON, err := os.ReadFile(filepath.Join(dir, tocFile))
	if err != nil {
		return fmt.Errorf("read TOC: %w", err)
	}
	toc, err := rillfs.ParseTOC(tocJSON, rec.TOCOffset, rec.Desc.Size, rec.TOCDigest, s.tocLimits)
	if err != nil {
		return err
	}
	idx, err := rillfs.NewIndex(toc)
	if err != nil {
		return err
	}
	if rec.Bottom {
		idx.DropWhiteouts()
	} else if parent != "" {
		s.inheritImplied(ctx, idx, parent)
	}
	blob, err := s.resolver.OpenBlob(ctx, rec.Ref, rec.Desc)
	if err != nil {
		return fmt.Errorf("open blob %s: %w", rec.Desc.Digest, err)
	}
	mountpoint := filepath.Join(dir, "fs")
	if err := unmountStale(mountpoint); err != nil {
		return err
	}
	ml, err := s.mountLayer(ctx, mountpoint, idx, RemoteLayer{Ref: rec.Ref, Image: rec.Image, Desc: rec.Desc, Reason: rec.Reason, Blob: blob})
	if err != nil {
		return err
	}
	s.remote.add(id, ml)
	ml.mounted.Prefetch(rec.Prefetch) // what is still missing
	s.startBackground(ml, rec.Original)
	return nil
}

// mountUnavailable puts a layer that answers EIO in place of one that could not be restored,
// so that containers see errors rather than an empty layer.
func (s *Snapshotter) mountUnavailable(ctx context.Context, id string) {
	mountpoint := filepath.Join(s.snapshotsDir(), id, "fs")
	if err := unmountStale(mountpoint); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Error("cannot clear the mountpoint of an unrestorable layer")
		return
	}
	m, err := rillfs.MountUnavailable(mountpoint)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Error("cannot mount the unavailable form of a layer")
		return
	}
	s.remote.add(id, &mountedLayer{mounted: m})
}

// unmountStale detaches a FUSE mount left by a daemon that died without unmounting (its
// connection is gone: every access fails with ENOTCONN).
func unmountStale(mountpoint string) error {
	mounted, err := mountinfo.Mounted(mountpoint)
	if err != nil && !errors.Is(err, unix.ENOTCONN) {
		return fmt.Errorf("check mount %s: %w", mountpoint, err)
	}
	if mounted || errors.Is(err, unix.ENOTCONN) {
		if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			return fmt.Errorf("unmount stale %s: %w", mountpoint, err)
		}
	}
	return nil
}
