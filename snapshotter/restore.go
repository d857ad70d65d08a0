package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

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
		kc := &keptConn{f: s.kept[fdName(l.id)]}
		delete(s.kept, fdName(l.id))
		resumed := kc.f != nil
		if err := s.restoreLayer(ctx, l.id, l.parent, false, kc); err != nil {
			s.metrics.restores.WithLabelValues("degraded").Inc()
			entry.WithError(err).Error("streamed layer not restored: reads of it fail (EIO) until it is recovered (a damaged TOC is fetched again once the registry answers) or its image is removed and pulled again")
			s.mountUnavailable(ctx, l.id, kc)
			s.recovering.Go(func() { s.recoverUnavailable(l.id, l.parent) })
			continue
		}
		if resumed && kc.f == nil && !kc.fresh {
			s.metrics.restores.WithLabelValues("resumed").Inc()
			entry.Info("streamed layer restored: its connection served again, running containers keep reading")
			continue
		}
		s.metrics.restores.WithLabelValues("ok").Inc()
		entry.Info("streamed layer restored")
	}
	s.dropKept(ctx)
}

// keptConn is the connection a previous process kept for a layer, until restoring it uses it.
type keptConn struct {
	f *os.File
	// fresh is set when the kept connection could not be served again and the layer was
	// mounted afresh.
	fresh bool
}

// take returns the kept connection, if any, and leaves none.
func (k *keptConn) take() *os.File {
	if k == nil {
		return nil
	}
	f := k.f
	k.f = nil
	return f
}

// dropKept lets go of the connections kept for layers that are gone (their snapshots removed
// while no daemon ran): each is aborted, so that nothing waits on it, and dropped from the
// store.
func (s *Snapshotter) dropKept(ctx context.Context) {
	for name, f := range s.kept {
		entry := log.G(ctx).WithField("name", name)
		if id, ok := strings.CutPrefix(name, "layer-"); ok && s.fds != nil {
			mountpoint := filepath.Join(s.snapshotsDir(), filepath.Base(id), "fs")
			if err := rillfs.Abort(mountpoint); err != nil {
				entry.WithError(err).Debug("abort the kept connection of a layer that is gone")
			}
		}
		if s.fds != nil {
			if err := s.fds.Remove(ctx, name); err != nil {
				entry.WithError(err).Warn("drop a kept connection")
			}
		}
		f.Close()
		entry.Info("dropped the kept connection of a streamed layer that is gone")
	}
	s.kept = nil
}

// restoreLayer mounts layer id again from its record and TOC on disk; with fetch, a TOC that is
// damaged on disk is fetched again from the registry (at start the daemon does not wait for
// the network: recoverUnavailable does that afterwards). With a connection kept by the previous
// process (kc), the layer is served again on it, so that running containers keep reading; one
// that cannot be is aborted (its users get errors, never a hang) and the layer mounted afresh.
// kc is left holding the connection when the layer was not restored.
func (s *Snapshotter) restoreLayer(ctx context.Context, id, parent string, fetch bool, kc *keptConn) error {
	dir := filepath.Join(s.snapshotsDir(), id)
	rec, blob, err := s.openRecorded(ctx, dir)
	if err != nil {
		return err
	}
	toc, err := s.restoreTOC(ctx, dir, rec, blob, fetch)
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
	mountpoint := filepath.Join(dir, "fs")
	layer := RemoteLayer{Ref: rec.Ref, Image: rec.Image, Desc: rec.Desc, Reason: rec.Reason, Blob: blob}
	var ml *mountedLayer
	if dev := kc.take(); dev != nil {
		ml, err = s.mountLayer(ctx, mountpoint, idx, layer, dev)
		dev.Close() // the layer has its own duplicate
		if err != nil {
			log.G(ctx).WithError(err).WithField("id", id).Error("the FUSE connection kept for a streamed layer cannot be served again: aborting it (running containers using the layer see errors and must be restarted) and mounting the layer afresh")
			if aerr := rillfs.Abort(mountpoint); aerr != nil {
				log.G(ctx).WithError(aerr).WithField("id", id).Warn("abort the kept connection")
			}
			kc.fresh = true
		}
	}
	if ml == nil {
		if err := unmountStale(mountpoint); err != nil {
			return err
		}
		ml, err = s.mountLayer(ctx, mountpoint, idx, layer, nil)
		if err != nil {
			return err
		}
	}
	if !s.remote.add(id, ml) {
		return errClosing
	}
	s.served(ctx, id, ml)
	ml.mounted.Prefetch(rec.Prefetch) // what is still missing
	s.startBackground(ml, rec.Original)
	return nil
}

// restoreTOC reads the layer's TOC from dir; one that is missing or damaged (it no longer
// hashes to the TOC digest the image named) is fetched again from the registry, within the
// prepare timeout, and written back.
func (s *Snapshotter) restoreTOC(ctx context.Context, dir string, rec layerRecord, blob Blob, fetch bool) (*rillfs.TOC, error) {
	tocJSON, err := os.ReadFile(filepath.Join(dir, tocFile))
	if err == nil {
		toc, perr := rillfs.ParseTOC(tocJSON, rec.TOCOffset, rec.Desc.Size, rec.TOCDigest, s.tocLimits)
		if perr == nil {
			return toc, nil
		}
		err = perr
	}
	if !fetch {
		return nil, fmt.Errorf("TOC on disk: %w (fetched again from the registry once it answers)", err)
	}
	entry := log.G(ctx).WithField("blob", rec.Desc.Digest.String()).WithError(err)
	fctx, cancel := context.WithTimeout(ctx, s.prepareTimeout)
	defer cancel()
	toc, fetched, ferr := rillfs.LoadTOCJSON(fctx, blob, rec.Desc.Size, rec.TOCDigest, s.tocLimits)
	if ferr != nil {
		return nil, fmt.Errorf("the TOC on disk is unusable (%w), and fetching it again failed: %w", err, ferr)
	}
	if werr := writeFileAtomic(filepath.Join(dir, tocFile), fetched); werr != nil {
		entry.WithField("write_error", werr.Error()).Warn("TOC fetched again but not written back: it is fetched again at the next start")
	}
	entry.Warn("the TOC of a streamed layer was damaged on disk: fetched it again from the registry")
	return toc, nil
}

// recoverUnavailable tries again, with backoff, to restore a layer mounted as unavailable
// (its TOC damaged, the registry not answering at start), for as long as its snapshot is
// there: once the registry answers, the layer is served again. Close stops it (ctx).
func (s *Snapshotter) recoverUnavailable(id, parent string) {
	ctx := s.closing
	wait := s.retryFirst
	for {
		ml := s.remote.get(id)
		if ml == nil || ml.blob != "" {
			return // removed, or restored
		}
		if !sleepUnlessDone(ml.mounted.Done(), jitter(wait)) {
			return
		}
		wait = min(2*wait, s.retryMax)
		if err := s.fetchTOCAgain(ctx, id); err != nil {
			log.L.WithError(err).WithField("id", id).Debug("streamed layer still not restorable")
			continue // the unavailable form stays in place meanwhile
		}
		if err := s.unmountUnavailable(ctx, id, ml); err != nil {
			continue
		}
		err := s.restoreLayer(ctx, id, parent, true, nil)
		if err == nil {
			s.metrics.restores.WithLabelValues("recovered").Inc()
			log.L.WithField("id", id).Info("streamed layer recovered: it is served again")
			return
		}
		if ctx.Err() != nil {
			return // closing: nothing is mounted again
		}
		log.L.WithError(err).WithField("id", id).Debug("streamed layer still not restorable")
		s.mountUnavailable(ctx, id, nil)
	}
}

// openRecorded reads the record of the streamed layer in dir and opens its blob.
func (s *Snapshotter) openRecorded(ctx context.Context, dir string) (layerRecord, Blob, error) {
	var rec layerRecord
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return rec, nil, fmt.Errorf("read layer record: %w", err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, nil, fmt.Errorf("decode layer record: %w", err)
	}
	blob, err := s.resolver.OpenBlob(ctx, rec.Ref, rec.Desc)
	if err != nil {
		return rec, nil, fmt.Errorf("open blob %s: %w", rec.Desc.Digest, err)
	}
	return rec, blob, nil
}

// fetchTOCAgain makes layer id's TOC on disk usable, fetching it again if need be.
func (s *Snapshotter) fetchTOCAgain(ctx context.Context, id string) error {
	dir := filepath.Join(s.snapshotsDir(), id)
	rec, blob, err := s.openRecorded(ctx, dir)
	if err != nil {
		return err
	}
	_, err = s.restoreTOC(ctx, dir, rec, blob, true)
	return err
}

// unmountUnavailable takes the unavailable form of layer id down, if still in place.
func (s *Snapshotter) unmountUnavailable(ctx context.Context, id string, ml *mountedLayer) error {
	if s.remote.take(id) != ml {
		return fmt.Errorf("layer %s changed meanwhile", id)
	}
	uctx, cancel := context.WithTimeout(ctx, closeUnmountWait)
	defer cancel()
	if err := ml.mounted.Unmount(uctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Debug("unmount the unavailable form of a layer being recovered")
	}
	return nil
}

// mountUnavailable puts a layer that answers EIO in place of one that could not be restored,
// so that containers see errors rather than an empty layer. A connection kept for it (kc) is
// served that way on the same mount, and no longer kept.
func (s *Snapshotter) mountUnavailable(ctx context.Context, id string, kc *keptConn) {
	mountpoint := filepath.Join(s.snapshotsDir(), id, "fs")
	if dev := kc.take(); dev != nil {
		m, err := rillfs.ResumeUnavailable(ctx, dev, mountpoint, filepath.Dir(mountpoint))
		dev.Close()
		if s.fds != nil {
			if rerr := s.fds.Remove(ctx, fdName(id)); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("id", id).Warn("drop a kept connection")
			}
		}
		if err == nil {
			s.remote.add(id, &mountedLayer{mounted: m})
			return
		}
		log.G(ctx).WithError(err).WithField("id", id).Warn("kept connection of an unrestorable layer")
	}
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
