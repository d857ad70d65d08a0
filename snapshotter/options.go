package snapshotter

import (
	"os"
	"time"

	"github.com/rillstream/rill/cache"
	"github.com/rillstream/rill/fdstore"
	rillfs "github.com/rillstream/rill/fs"
)

// Option changes one setting of the snapshotter (NewSnapshotter).
type Option func(*settings)

// settings are what the options set; the Snapshotter keeps them.
type settings struct {
	asyncRemove     bool
	mountOptions    []string
	lockTimeout     time.Duration
	metrics         *Metrics
	resolver        Resolver // nil: streaming is off
	tocLimits       rillfs.Limits
	fsMount         rillfs.MountOptions
	cache           *cache.Store
	observer        LayerObserver
	background      bool
	backgroundDelay time.Duration
	retryFirst      time.Duration
	retryMax        time.Duration
	prepareTimeout  time.Duration
	unhealthyFor    time.Duration
	recordWindow    time.Duration
	profileSender   ProfileSender
	nodeName        string
	// fds keeps each streamed layer's FUSE connection outside the process (nil: nothing is
	// kept, a restart ends the layers' connections); kept are the connections the previous
	// process kept, by name, which the restore serves again.
	fds  fdstore.Store
	kept map[string]*os.File
}

// defaults are the settings of a snapshotter given no options.
func defaults() settings {
	return settings{
		lockTimeout:    10 * time.Second,
		retryFirst:     time.Second,
		retryMax:       5 * time.Minute,
		prepareTimeout: 5 * time.Second,
		unhealthyFor:   time.Minute,
	}
}

// WithMetadataLockTimeout bounds the wait for the metadata store's file lock, held by another
// process on the same root (default 10 s; the daemon locks the root first, this is the net
// under that).
func WithMetadataLockTimeout(d time.Duration) Option {
	return func(s *settings) { s.lockTimeout = d }
}

// WithAsyncRemove makes Remove update only the metadata; the snapshot's directory is deleted
// by the next Cleanup (containerd's garbage collector calls it). Without it, Remove deletes
// the directory before it returns.
func WithAsyncRemove(async bool) Option {
	return func(s *settings) { s.asyncRemove = async }
}

// WithMountOptions adds overlayfs mount options to every overlay mount.
func WithMountOptions(options []string) Option {
	return func(s *settings) { s.mountOptions = append(s.mountOptions, options...) }
}

// WithMetrics sets the collectors the snapshotter counts its decisions in.
func WithMetrics(m *Metrics) Option {
	return func(s *settings) { s.metrics = m }
}

// WithResolver turns streaming on: layers the resolver accepts are mounted through FUSE
// instead of being pulled.
func WithResolver(r Resolver) Option {
	return func(s *settings) { s.resolver = r }
}

// WithFSOptions configures the FUSE filesystems of streamed layers.
func WithFSOptions(limits rillfs.Limits, mount rillfs.MountOptions) Option {
	return func(s *settings) { s.tocLimits, s.fsMount = limits, mount }
}

// WithCache keeps the data of streamed layers in store, keyed by blob digest: shared by the
// snapshots of one layer, kept across restarts, freed when the last snapshot of the layer goes.
func WithCache(store *cache.Store) Option {
	return func(s *settings) { s.cache = store }
}

// WithLayerObserver makes the snapshotter tell o about streamed layers.
func WithLayerObserver(o LayerObserver) Option {
	return func(s *settings) { s.observer = o }
}

// WithBackgroundFetch makes every streamed layer complete in the background (after its
// prefetch and delay, yielding to reads) and checks a streaming artifact's layer against the
// original. The delay keeps the background fetch off the link while a container starts: reads
// only wait for requests to start, not for bandwidth shared with a transfer in flight.
func WithBackgroundFetch(on bool, delay time.Duration) Option {
	return func(s *settings) { s.background, s.backgroundDelay = on, delay }
}

// WithBackgroundRetry sets how a background fetch that failed (the registry down, a
// response corrupt) is resumed: after first, doubling up to max, each wait jittered by ±20%,
// for as long as the layer is mounted. Defaults: 1 s and 5 min.
func WithBackgroundRetry(first, max time.Duration) Option {
	return func(s *settings) { s.retryFirst, s.retryMax = first, max }
}

// WithPrepareTimeout bounds the decision for one layer at Prepare (resolving the image, the
// footer and TOC of the layer): past it the layer is pulled in full, and its registry host is
// marked unhealthy for unhealthyFor, during which every Prepare of that host decides at once
// to pull in full. Defaults: 5 s and 1 min.
func WithPrepareTimeout(timeout, unhealthyFor time.Duration) Option {
	return func(s *settings) { s.prepareTimeout, s.unhealthyFor = timeout, unhealthyFor }
}

// WithRecordWindow records, per image, the order in which its files are first opened during
// window after its layers are mounted, and writes it as a prefetch profile under
// root/profiles (for `rill create --prefetch-profile`). 0 turns recording off.
func WithRecordWindow(window time.Duration) Option {
	return func(s *settings) { s.recordWindow = window }
}

// WithProfileReports sends each profile recorded for a streaming artifact through send, as the
// node named node: in the background, retried with backoff, at most once per artifact (what
// was sent is remembered under root/profiles/reported, so a restart does not send it again;
// a changed artifact has another digest and is reported anew).
func WithProfileReports(send ProfileSender, node string) Option {
	return func(s *settings) { s.profileSender, s.nodeName = send, node }
}

// WithFDStore keeps every streamed layer's FUSE connection in store, so that the mounts of
// running containers outlive the process: kept are the connections the previous process kept
// (from fdstore.Open), which the restore at start serves again — without the network, before
// anything else is served. Connections kept for layers that are gone are dropped. On Close the
// layers are handed over (left mounted, their connections kept) rather than unmounted.
func WithFDStore(store fdstore.Store, kept map[string]*os.File) Option {
	if store != nil && store.Kind() == "none" {
		store = nil // fdstore's mode off: nothing outlives the process, layers are unmounted
	}
	return func(s *settings) { s.fds, s.kept = store, kept }
}
