package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rillstream/rill/cache"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// MountOptions configure a mounted layer. Zero values choose the defaults.
type MountOptions struct {
	// ReadTimeout bounds one FUSE read; past it the read gets EIO. Default 30 s.
	ReadTimeout time.Duration
	// Metrics receives the layer's counters; nil makes unregistered ones.
	Metrics *Metrics
	// Log is the logger, with the fields that identify the layer. Default the standard logger.
	Log *logrus.Entry
	// Debug logs every FUSE request.
	Debug bool
	// Cache holds the layer's cached file contents: reads are served from it where it has the
	// bytes, and verified chunks fetched from the blob are stored in it. nil reads from the
	// blob only. Mount pins the handle for as long as the layer is served, so that nothing of
	// a mounted layer is evicted (the cache's budget evicts only data no mounted layer needs),
	// and unpins it when the server stops. The caller owns the handle: it acquires it
	// (Store.Layer) and releases it once the layer is no longer served (Unmount returned nil,
	// or Wait returned).
	Cache *cache.Layer
	// NoPassthrough keeps every read in user space, even of files complete in the cache.
	NoPassthrough bool
	// BackgroundRate caps the background fetch (bytes per second, shared by every layer
	// given the same limiter); nil: no cap.
	BackgroundRate *rate.Limiter
	// RecordWindow, when positive, records the order in which files are first opened during
	// that long after the mount (Mounted.Recorded): the image's prefetch profile.
	RecordWindow time.Duration
	// Buffer keeps in memory the chunks read that the cache could not store (its disk full,
	// its budget held), so that they are not fetched again; nil: none are kept.
	Buffer *ChunkBuffer
}

// cacheForever is how long the kernel may keep entries and attributes of a layer: the layer
// is immutable for as long as it is mounted.
const cacheForever = 365 * 24 * time.Hour

// layerFS is what the nodes of one mounted layer share.
type layerFS struct {
	noPassthrough bool
	reader        *chunkReader
	cache         *cache.Layer // nil: no cache
	readTimeout   time.Duration
	metrics       *Metrics
	log           *logrus.Entry
	// bytes and files of the layer, for statfs.
	bytes int64
	files int
	// recorder records first opens (nil: not recording).
	recorder *recorder
	// backgroundRate caps the background fetch (nil: no cap).
	backgroundRate *rate.Limiter
}

// Mounted is a layer served through FUSE.
type Mounted struct {
	server     *fuse.Server
	mountpoint string
	lfs        *layerFS
	idx        *Index
	// ctx ends at Unmount: background work of the layer stops with it.
	ctx      context.Context
	cancel   context.CancelFunc
	prefetch *prefetcher
}

// Mount serves idx, whose file data is in blob, at mountpoint (an existing directory).
func Mount(ctx context.Context, mountpoint string, idx *Index, blob io.ReaderAt, opts MountOptions) (*Mounted, error) {
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 30 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	log := opts.Log.WithField("mountpoint", mountpoint)
	lfs := &layerFS{
		reader:        &chunkReader{blob: blob, cache: opts.Cache, metrics: opts.Metrics, log: log, buffer: opts.Buffer},
		cache:         opts.Cache,
		noPassthrough: opts.NoPassthrough,
		readTimeout:   opts.ReadTimeout,
		metrics:       opts.Metrics,
		log:           log,
		bytes:         idx.Bytes,
		files:         idx.Files,
	}
	if opts.RecordWindow > 0 {
		lfs.recorder = newRecorder(opts.RecordWindow)
	}
	lfs.backgroundRate = opts.BackgroundRate
	if opts.Cache != nil {
		lfs.reader.neighbours = idx.segments()[1:] // without the headers before the first chunk
	}
	root := &node{n: idx.Root, ino: 1, layer: lfs}
	if opts.Cache != nil {
		opts.Cache.Pin()
	}
	timeout := cacheForever
	server, err := gofs.Mount(mountpoint, root, &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:        "rill",
			Name:          "rill",
			AllowOther:    true, // containers run as any user
			Debug:         opts.Debug,
			DisableXAttrs: false,
			// Let the kernel check permissions against the modes we report.
			Options: []string{"ro", "default_permissions"},
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
		OnAdd: func(ctx context.Context) {
			buildTree(ctx, root, lfs)
		},
	})
	if err != nil {
		if opts.Cache != nil {
			opts.Cache.Unpin()
		}
		return nil, fmt.Errorf("mount layer at %s: %w", mountpoint, err)
	}
	if opts.Cache != nil {
		// However the server stops (Unmount, an unmount from outside, the last user of a
		// detached mount letting go), the layer is no longer served.
		go func() {
			server.Wait()
			opts.Cache.Unpin()
		}()
	}
	bg, cancel := context.WithCancel(context.Background())
	return &Mounted{server: server, mountpoint: mountpoint, lfs: lfs, idx: idx, ctx: bg, cancel: cancel}, nil
}

// buildTree creates the inodes of the whole tree once; hardlinked names share one inode.
func buildTree(ctx context.Context, root *node, lfs *layerFS) {
	inodes := map[*Node]*gofs.Inode{}
	next := uint64(2)
	var walk func(dir *gofs.Inode, n *Node)
	walk = func(dir *gofs.Inode, n *Node) {
		for i, name := range n.Names {
			child := n.Children[i]
			if in, ok := inodes[child]; ok {
				dir.AddChild(name, in, false)
				continue
			}
			ino := next
			next++
			var emb gofs.InodeEmbedder
			switch child.Kind {
			case KindReg:
				emb = &fileNode{node: node{n: child, ino: ino, layer: lfs}}
			case KindSymlink:
				emb = &symlinkNode{node: node{n: child, ino: ino, layer: lfs}}
			default:
				emb = &node{n: child, ino: ino, layer: lfs}
			}
			in := dir.NewPersistentInode(ctx, emb, gofs.StableAttr{Mode: child.FileMode() & syscall.S_IFMT, Ino: ino})
			inodes[child] = in
			dir.AddChild(name, in, false)
			if child.Kind == KindDir {
				walk(in, child)
			}
		}
	}
	walk(&root.Inode, root.n)
}

// Unmount unmounts the layer and stops serving it. A layer still referenced — an overlay mount
// of a running container holds it even once it is gone from the mount table — is served until
// its last user lets go; Unmount waits for that until ctx ends, then reports it.
func (m *Mounted) Unmount(ctx context.Context) error {
	if m.cancel != nil {
		m.cancel()
	}
	if m.lfs != nil {
		defer m.lfs.reader.buffer.drop(m.lfs.reader)
	}
	err := unix.Unmount(m.mountpoint, 0)
	switch {
	case err == nil:
	case errors.Is(err, unix.EBUSY):
		if err := unix.Unmount(m.mountpoint, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detach busy layer %s: %w", m.mountpoint, err)
		}
		return fmt.Errorf("layer %s: detached, served until its last user lets go: %w", m.mountpoint, ErrInUse)
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
		// Not mounted any more (unmounted from outside): the server stops by itself.
	default:
		return fmt.Errorf("unmount %s: %w", m.mountpoint, err)
	}
	stopped := make(chan struct{})
	go func() { m.server.Wait(); close(stopped) }()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("layer %s is unmounted but still referenced (by an overlay mount of a running container?): served until its last user lets go: %w", m.mountpoint, ErrInUse)
	}
}

// ErrInUse is wrapped by Unmount when the layer is still used (by the overlay mount of a
// running container): it is served for as long as this process runs.
var ErrInUse = errors.New("layer in use")

// Done is closed when the layer is unmounted: background work of the layer stops with it.
func (m *Mounted) Done() <-chan struct{} { return m.ctx.Done() }

// LocalBytes returns how many bytes of the layer's files are in the cache (at most idx.Bytes:
// neither the cache's block rounding nor the tar headers kept for verification count).
func (m *Mounted) LocalBytes() int64 {
	if m.lfs.cache == nil {
		return 0
	}
	return m.lfs.cache.PresentBytes(func(key string) bool { return !isRecordKey(key) })
}

// Wait blocks until the filesystem is unmounted.
func (m *Mounted) Wait() { m.server.Wait() }
