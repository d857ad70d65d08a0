package snapshotter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/snapshotter/status"
)

// Labels rill sets on the committed snapshot of a streamed layer.
const (
	// labelRemote marks a committed snapshot whose directory is a FUSE mount of a streamed
	// layer; its value is the digest of the streamed blob. Restore remounts these at start.
	labelRemote = "dev.rill.remote.blob"
)

// Blob is a layer blob in the registry, read by range.
type Blob interface {
	io.ReaderAt
	Size() int64
}

// RemoteLayer is a layer the resolver decided to stream.
type RemoteLayer struct {
	// Ref is the reference the blob is fetched through (repository and tag or digest).
	Ref string
	// Image is the image reference pulled (the CRI label), shown by `rill status`.
	Image string
	// Desc is the streamed blob: an eStargz layer (the pulled layer itself, or its
	// counterpart in a streaming artifact).
	Desc ocispec.Descriptor
	// TOCDigest is the digest of the blob's TOC, from the image's manifest.
	TOCDigest digest.Digest
	// Reason says why the layer streams (status.ReasonEStargz, ReasonBound, ReasonReferrer).
	Reason string
	// Blob reads Desc's bytes.
	Blob Blob
	// Prefetch are the image's start-up files (its prefetch profile), in first-access order;
	// empty for a third-party eStargz layer, whose TOC marks them itself.
	Prefetch []string
	// Artifact is the digest of the streaming artifact the layer is part of ("" for a
	// third-party eStargz layer): a profile recorded for the image is reported for it.
	Artifact digest.Digest
	// Original is what a streaming artifact's layer must decompress to, checked once the
	// layer is complete; nil for a third-party eStargz layer.
	Original *rillfs.Original
}

// NotStreamableError says why a layer is pulled in full.
type NotStreamableError struct{ Reason string }

func (e *NotStreamableError) Error() string { return "not streamable: " + e.Reason }

// NotStreamable returns the error a Resolver returns for a layer that is pulled in full.
func NotStreamable(reason string) error { return &NotStreamableError{Reason: reason} }

// Resolver decides which layers stream and opens their blobs. The daemon builds it on remote/.
type Resolver interface {
	// Resolve decides whether the layer named by l streams. A layer that is pulled in full
	// gets an error made by NotStreamable; any other error also means a full pull.
	Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error)
	// OpenBlob opens a blob for reading without touching the network until the first read
	// (restore must not wait for the registry).
	OpenBlob(ctx context.Context, ref string, desc ocispec.Descriptor) (Blob, error)
}

// layerRecord is what a streamed layer keeps on disk beside its mountpoint, so it can be
// mounted again after a restart without the network.
type layerRecord struct {
	Ref       string             `json:"ref"`
	Image     string             `json:"image,omitempty"`
	Desc      ocispec.Descriptor `json:"desc"`
	TOCDigest digest.Digest      `json:"tocDigest"`
	TOCOffset int64              `json:"tocOffset"`
	Reason    string             `json:"reason"`
	// Bottom is set for a layer without a parent: its whiteouts are dropped.
	Bottom bool `json:"bottom,omitempty"`
	// Prefetch is the layer's part of the image's prefetch profile.
	Prefetch []string `json:"prefetch,omitempty"`
	// Original is what the layer must decompress to (streaming artifacts).
	Original *rillfs.Original `json:"original,omitempty"`
	Mounted  time.Time        `json:"mounted"`
}

const (
	recordFile = "layer.json"
	tocFile    = "toc.json"
)

// prepareStreamed tries to stream the layer that the active snapshot key will hold. It returns
// an AlreadyExists error when the layer is streamed (committed under its target), or the
// reason it is pulled in full.
func (s *Snapshotter) prepareStreamed(ctx context.Context, key, parent string, l LayerLabels, opts []snapshots.Opt) (reason string, err error) {
	loaded, err := s.loader.load(ctx, l)
	if err != nil {
		if loaded == nil {
			return status.ReasonResolveError, err
		}
		return loaded.reason, err
	}
	layer, toc, tocJSON := loaded.layer, loaded.toc, loaded.tocJSON
	if s.failed.has(layer.Desc.Digest) {
		return status.ReasonVerificationFailed, fmt.Errorf("layer blob %s failed verification against the original before: not streamed again", layer.Desc.Digest)
	}
	id, err := s.snapshotID(ctx, key)
	if err != nil {
		return status.ReasonInternalError, err
	}
	dir := filepath.Join(s.snapshotsDir(), id)
	idx, err := loaded.index()
	if err != nil {
		return status.ReasonTOCInvalid, err
	}
	bottom := parent == ""
	if bottom {
		idx.DropWhiteouts()
	} else {
		s.inheritImplied(ctx, idx, parent)
	}
	prefetch := prefetchPaths(idx, layer.Prefetch, artifact.MaxPrefetchBytes)
	layer.Image = l.ImageRef
	rec := layerRecord{Ref: layer.Ref, Image: layer.Image, Desc: layer.Desc, TOCDigest: layer.TOCDigest, TOCOffset: toc.Offset, Reason: layer.Reason, Bottom: bottom, Prefetch: prefetch, Original: layer.Original, Mounted: time.Now().UTC()}
	if err := writeRecord(dir, rec, tocJSON); err != nil {
		return status.ReasonInternalError, err
	}
	ml, err := s.mountLayer(ctx, filepath.Join(dir, "fs"), idx, layer, nil)
	if err != nil {
		return status.ReasonMountError, err
	}
	labels := map[string]string{labelRemote: layer.Desc.Digest.String()}
	commitErr := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, l.Target, snapshots.Usage{Size: idx.Bytes, Inodes: int64(idx.Files)},
			append(append([]snapshots.Opt{}, opts...), snapshots.WithLabels(labels))...)
		return err
	})
	if commitErr != nil {
		if err := ml.unmount(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("unmount after a failed commit")
		}
		return status.ReasonCommitError, commitErr
	}
	s.remote.add(id, ml)
	s.served(ctx, id, ml)
	s.record(l.ImageRef, layer.Artifact, ml)
	ml.mounted.Prefetch(prefetch)
	s.startBackground(ml, layer.Original)
	return layer.Reason, nil
}

// inheritImplied gives the directories the layer only implies the metadata of the same
// directories in the layers below parent, as containerd's extraction does (else an upper layer
// that adds /tmp/x without listing /tmp would turn /tmp from 1777 into 0755). It never fails
// the layer: a lower it cannot read leaves the defaults, with a warning.
func (s *Snapshotter) inheritImplied(ctx context.Context, idx *rillfs.Index, parent string) {
	lowers, err := s.lowerDirs(ctx, parent)
	if err == nil {
		err = idx.InheritImplied(lowers)
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("parent", parent).Warn("directories the layer only implies keep default metadata where the layers below could not be read")
	}
}

// lowerDirs returns the directories of the snapshot parent and its parents, topmost first
// (overlayfs's lowerdir order).
func (s *Snapshotter) lowerDirs(ctx context.Context, parent string) ([]string, error) {
	var dirs []string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for name := parent; name != ""; {
			id, info, _, err := storage.GetInfo(ctx, name)
			if err != nil {
				return fmt.Errorf("parent snapshot %s: %w", name, err)
			}
			dirs = append(dirs, filepath.Join(s.snapshotsDir(), id, "fs"))
			name = info.Parent
		}
		return nil
	})
	return dirs, err
}

// prefetchPaths returns the files of the layer to prefetch: the profile's paths this layer
// has, in the profile's order, or for a layer without profile the files its eStargz writer
// placed before the prefetch landmark. A profile's files past budget bytes are left out.
func prefetchPaths(idx *rillfs.Index, profile []string, budget int64) []string {
	if len(profile) == 0 {
		return idx.Prioritized
	}
	// A profile only names what to fetch first, never what is served; still, whatever it
	// names, prefetch fetches at most budget bytes of a layer.
	var paths []string
	var bytes int64
	for _, p := range profile {
		if n := idx.Lookup(p); n != nil && n.Kind == rillfs.KindReg && bytes+n.Size <= budget {
			bytes += n.Size
			paths = append(paths, p)
		}
	}
	return paths
}

func (s *Snapshotter) snapshotID(ctx context.Context, key string) (string, error) {
	var id string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, err
}

func writeRecord(dir string, rec layerRecord, tocJSON []byte) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode layer record: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, tocFile), tocJSON); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, recordFile), data)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// alreadyStreamed is the answer to containerd for a streamed layer: the target exists, so
// containerd skips the download.
func alreadyStreamed(target string) error {
	return fmt.Errorf("target snapshot %q: streamed: %w", target, errdefs.ErrAlreadyExists)
}

// shareStreamed answers for a layer that is streamed already under target on the same parent,
// as happens when a second containerd namespace pulls an image the first one streamed (keys
// are per namespace, targets — chain IDs — are not). It removes the new active snapshot and
// reports true: containerd then finds the committed target (its snapshot.ref label and parent
// match) and shares it across namespaces, as it does for every snapshotter. A target on another
// parent, or a layer that could not be restored, is not shared (false): the layer is decided
// anew, and pulled in full if it cannot be streamed.
func (s *Snapshotter) shareStreamed(ctx context.Context, key, parent, target string) (bool, error) {
	if target == "" {
		return false, nil
	}
	var (
		id   string
		info snapshots.Info
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, info, _, err = storage.GetInfo(ctx, target)
		return err
	})
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up target %q: %w", target, err)
	}
	if info.Kind != snapshots.KindCommitted || info.Parent != parent || info.Labels[snapshots.LabelSnapshotRef] != target {
		return false, nil
	}
	if _, streamed := info.Labels[labelRemote]; streamed && !s.remote.available(id) {
		return false, nil
	}
	if err := s.overlay.Remove(ctx, key); err != nil {
		return false, fmt.Errorf("remove the active snapshot %q in favour of the shared target: %w", key, err)
	}
	return true, nil
}
