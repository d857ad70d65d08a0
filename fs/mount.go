package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
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
	// StateDir, when set, is a directory of the layer's own where Mount keeps what a later
	// process needs to serve the same FUSE connection again (Resume): the INIT answered, the
	// numbering of the nodes, the io mode of each inode.
	StateDir string
	// Buffer keeps in memory the chunks read that the cache could not store (its disk full,
	// its budget held), so that they are not fetched again; nil: none are kept.
	Buffer *ChunkBuffer
}

// cacheForever is how long the kernel may keep entries and attributes of a layer: the layer
// is immutable for as long as it is mounted.
const cacheForever = 365 * 24 * time.Hour

// Mounted is a layer served through FUSE.
type Mounted struct {
	conn       *conn
	mountpoint string
	lfs        *layerFS // nil for an unavailable layer
	idx        *Index
	stateDir   string
	// ctx ends at Unmount or Stop: background work of the layer stops with it.
	ctx      context.Context
	cancel   context.CancelFunc
	prefetch *prefetcher
	// stopped is closed once the connection is no longer served by this process.
	stopped chan struct{}
}

// connState is what the next process needs to serve a connection: the INIT request answered
// (replayed into its protocol server) and the numbering of the nodes.
type connState struct {
	Scheme string `json:"scheme"`
	Nodes  int    `json:"nodes"`
	Init   []byte `json:"init"`
}

const connStateFile = "fuse-conn.json"

// ErrNotResumable is wrapped by Resume when the connection cannot be served again by this
// process: its state is missing or does not match the layer (another numbering of the nodes).
var ErrNotResumable = errors.New("FUSE connection not resumable")

func (o *MountOptions) withDefaults(mountpoint string) {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	if o.Log == nil {
		o.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	o.Log = o.Log.WithField("mountpoint", mountpoint)
}

func newLayerFS(idx *Index, blob io.ReaderAt, opts MountOptions) *layerFS {
	lfs := &layerFS{
		RawFileSystem:  fuse.NewDefaultRawFileSystem(),
		reader:         &chunkReader{blob: blob, cache: opts.Cache, metrics: opts.Metrics, log: opts.Log, buffer: opts.Buffer},
		cache:          opts.Cache,
		noPassthrough:  opts.NoPassthrough,
		readTimeout:    opts.ReadTimeout,
		metrics:        opts.Metrics,
		log:            opts.Log,
		bytes:          idx.Bytes,
		files:          idx.Files,
		backgroundRate: opts.BackgroundRate,
		nodes:          newNodeTable(idx.Root),
		handles:        newHandleTable(),
	}
	if opts.RecordWindow > 0 {
		lfs.recorder = newRecorder(opts.RecordWindow)
	}
	if opts.Cache != nil {
		lfs.reader.neighbours = idx.segments()[1:] // without the headers before the first chunk
	}
	return lfs
}

// handshakeTimeout bounds the wait for the kernel's INIT after mount(2).
const handshakeTimeout = 10 * time.Second

// Mount serves idx, whose file data is in blob, at mountpoint (an existing directory). With
// opts.StateDir, what a later process needs to serve the connection again (Resume) is kept
// there.
func Mount(ctx context.Context, mountpoint string, idx *Index, blob io.ReaderAt, opts MountOptions) (*Mounted, error) {
	opts.withDefaults(mountpoint)
	lfs := newLayerFS(idx, blob, opts)
	iom, err := newIOModes(opts.StateDir, lfs.nodes.len(), false)
	if err != nil {
		return nil, err
	}
	lfs.io = iom
	dev, err := openDevice(mountpoint, "rill")
	if err != nil {
		iom.close()
		return nil, fmt.Errorf("mount layer: %w", err)
	}
	c, err := newConn(dev, lfs, opts.Log)
	var init []byte
	if err == nil {
		lfs.conn = c
		init, err = c.handshake(handshakeTimeout)
	}
	if err == nil && opts.StateDir != "" {
		var state []byte
		state, err = json.Marshal(connState{Scheme: idScheme, Nodes: lfs.nodes.len(), Init: init})
		if err == nil {
			err = writeFileAtomic(filepath.Join(opts.StateDir, connStateFile), state)
		}
	}
	if err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		dev.Close()
		iom.close()
		return nil, fmt.Errorf("mount layer at %s: %w", mountpoint, err)
	}
	m := start(c, mountpoint, lfs, idx, opts)
	if err := disablePoll(mountpoint); err != nil {
		opts.Log.WithError(err).Warn("FUSE poll left on: a process that serves this layer and opens its files could hang")
	}
	return m, nil
}

// Resume serves again, in this process, a layer an earlier process mounted with the same
// opts.StateDir and served through dev (its /dev/fuse descriptor, kept across the restart):
// same index, same node IDs, the open files' handles still valid. Requests the earlier
// process took and did not answer are sent again by the kernel (FUSE_NOTIFY_RESEND, Linux
// 6.9+; on older kernels they wait until the layer is unmounted). dev stays the caller's.
func Resume(ctx context.Context, dev *os.File, mountpoint string, idx *Index, blob io.ReaderAt, opts MountOptions) (*Mounted, error) {
	opts.withDefaults(mountpoint)
	if opts.StateDir == "" {
		return nil, fmt.Errorf("resume layer at %s: no state directory: %w", mountpoint, ErrNotResumable)
	}
	state, err := readConnState(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("resume layer at %s: %w", mountpoint, err)
	}
	// A connection whose mount was taken away meanwhile (umount -l) may live on in the mounts
	// of running containers, but new ones would find an empty directory where the layer was.
	if err := checkMounted(mountpoint); err != nil {
		return nil, fmt.Errorf("resume layer at %s: %w: %w", mountpoint, err, ErrNotResumable)
	}
	lfs := newLayerFS(idx, blob, opts)
	if state.Scheme != idScheme || state.Nodes != lfs.nodes.len() {
		return nil, fmt.Errorf("resume layer at %s: served with %d nodes numbered %q, now %d numbered %q: %w",
			mountpoint, state.Nodes, state.Scheme, lfs.nodes.len(), idScheme, ErrNotResumable)
	}
	iom, err := newIOModes(opts.StateDir, lfs.nodes.len(), true)
	if err != nil {
		return nil, fmt.Errorf("resume layer at %s: %w", mountpoint, err)
	}
	lfs.io = iom
	own, err := adoptDevice(dev)
	if err != nil {
		iom.close()
		return nil, err
	}
	c, err := newConn(own, lfs, opts.Log)
	if err == nil {
		lfs.conn = c
		err = c.replayInit(state.Init)
	}
	if err != nil {
		own.Close()
		iom.close()
		return nil, fmt.Errorf("resume layer at %s: %w: %w", mountpoint, err, ErrNotResumable)
	}
	m := start(c, mountpoint, lfs, idx, opts)
	if err := c.resend(); err != nil {
		opts.Log.WithError(err).Warn("the kernel cannot resend the requests the previous process left unanswered (Linux < 6.9): those reads wait until the layer is unmounted")
	}
	return m, nil
}

func readConnState(dir string) (connState, error) {
	var state connState
	data, err := os.ReadFile(filepath.Join(dir, connStateFile))
	if err != nil {
		return state, fmt.Errorf("%w: %w", ErrNotResumable, err)
	}
	if err := json.Unmarshal(data, &state); err != nil {
		return state, fmt.Errorf("%w: decode %s: %w", ErrNotResumable, connStateFile, err)
	}
	return state, nil
}

// start serves c and returns the layer.
func start(c *conn, mountpoint string, lfs *layerFS, idx *Index, opts MountOptions) *Mounted {
	if opts.Cache != nil {
		opts.Cache.Pin()
	}
	bg, cancel := context.WithCancel(context.Background())
	m := &Mounted{conn: c, mountpoint: mountpoint, lfs: lfs, idx: idx, stateDir: opts.StateDir, ctx: bg, cancel: cancel, stopped: make(chan struct{})}
	go c.serve()
	go func() {
		// However the connection stops being served here (Unmount, an unmount from outside,
		// the last user of a detached mount letting go, Stop), the layer is no longer served.
		<-c.done
		c.closeWake()
		if c.err != nil && !errors.Is(c.err, errConnStopped) {
			opts.Log.WithError(c.err).Warn("FUSE connection failed")
		}
		if !errors.Is(c.err, errConnStopped) {
			c.close()
			if lfs != nil && lfs.io != nil {
				lfs.io.close()
			}
		}
		if opts.Cache != nil {
			opts.Cache.Unpin()
		}
		close(m.stopped)
	}()
	return m
}

// Device returns the layer's /dev/fuse descriptor: kept outside the process (fdstore), it keeps
// the mount alive across a restart, and Resume serves it again. It stays the layer's.
func (m *Mounted) Device() *os.File { return m.conn.dev }

// handOverWait bounds how long Stop lets requests in flight finish.
const handOverWait = 500 * time.Millisecond

// Stop stops serving the layer in this process and leaves it mounted: its connection lives on
// in whoever else holds the descriptor (Device), and a later process serves it again
// (Resume). Requests being answered get up to half a second; the others are sent again to the
// next process. Background work of the layer stops.
func (m *Mounted) Stop() {
	m.cancel()
	if m.lfs != nil {
		m.lfs.reader.buffer.drop(m.lfs.reader)
	}
	m.conn.stop(handOverWait)
	<-m.stopped
	if m.lfs != nil && m.lfs.io != nil {
		m.lfs.io.close()
	}
	m.conn.close()
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
	select {
	case <-m.stopped:
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

// Wait blocks until the filesystem is no longer served here (unmounted, or Stop).
func (m *Mounted) Wait() { <-m.stopped }

// checkMounted reports an error unless a rill FUSE filesystem is mounted at mountpoint. It reads
// the mount table and never touches the mountpoint (which would wait on the connection).
func checkMounted(mountpoint string) error {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(filepath.Clean(mountpoint)))
	if err != nil {
		return fmt.Errorf("read the mount table: %w", err)
	}
	if len(infos) == 0 {
		return errors.New("nothing is mounted there any more")
	}
	if fstype := infos[len(infos)-1].FSType; fstype != "fuse.rill" {
		return fmt.Errorf("a %s filesystem is mounted there, not rill's", fstype)
	}
	return nil
}
