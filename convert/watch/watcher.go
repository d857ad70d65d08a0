package watch

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/policy"
	"github.com/rillstream/rill/remote"
)

// Config is what a Watcher needs.
type Config struct {
	// Registry is the registry the watcher serves, as image references name it
	// ("registry.example.com", "127.0.0.1:5000"): event repositories are read there.
	Registry string
	// Remote reaches the registry.
	Remote *remote.Registry
	// NewConverter returns a converter that reports its progress to progress (one per
	// operation), with opts (an operator's choices, rill create --no-wait) applied after the
	// watcher's own options.
	NewConverter func(progress func(convert.Progress), opts ...convert.Option) (*convert.Converter, error)
	// Policies says which repositories are enabled.
	Policies *policy.Store
	// StateDir holds the operations.
	StateDir string
	// ReconcileInterval is the time between reconciliations (0: only at start).
	ReconcileInterval time.Duration
	// WebhookToken, when set, is the bearer token webhook requests must carry (the
	// registry's notifications.endpoints[].headers.Authorization).
	WebhookToken string
	// Profiles configures the prefetch profiles nodes report (off without a token).
	Profiles ProfileConfig
	// Queue configures the operation queue.
	Queue []operation.Option
	// Log is where the watcher logs (default logrus's standard logger).
	Log *logrus.Entry
}

// Watcher queues and works conversions of new pushes to enabled repositories.
type Watcher struct {
	cfg   Config
	log   *logrus.Entry
	queue *operation.Queue
	tags  *convert.Converter
	// profiles holds nodes' profile reports (nil when profiles are off).
	profiles *profileStore

	mu    sync.Mutex
	kinds map[digest.Digest]convert.ManifestKind // manifests are immutable: classified once

	// startReconciled is closed when Run's first reconciliation has ended (tests wait for it).
	startReconciled chan struct{}
}

// maxKinds bounds the classification cache.
const maxKinds = 100000

// New opens the watcher's state (resuming operations a crash interrupted).
func New(cfg Config) (*Watcher, error) {
	if cfg.Registry == "" || cfg.Remote == nil || cfg.NewConverter == nil || cfg.Policies == nil || cfg.StateDir == "" {
		return nil, fmt.Errorf("watch: registry, remote, converter, policies and state directory are required: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	w := &Watcher{cfg: cfg, log: cfg.Log, kinds: map[digest.Digest]convert.ManifestKind{}, startReconciled: make(chan struct{})}
	var err error
	if w.tags, err = cfg.NewConverter(nil); err != nil {
		return nil, err
	}
	opts := append([]operation.Option{operation.WithLogger(cfg.Log)}, cfg.Queue...)
	if w.queue, err = operation.Open(cfg.StateDir, w.work, opts...); err != nil {
		return nil, err
	}
	if cfg.Profiles.Token != "" {
		if w.profiles, err = openProfiles(filepath.Join(cfg.StateDir, "profiles"), cfg.Log); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Queue returns the watcher's operations.
func (w *Watcher) Queue() *operation.Queue { return w.queue }

// Run works operations and reconciles (at once, then every ReconcileInterval) until ctx is
// done; running operations are then stopped and resumed at the next start.
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { w.queue.Run(ctx) })
	if w.profiles != nil {
		// A profile whose artifact has fewer reports than enough is decided once the delay
		// after its first report is over.
		wg.Go(func() {
			t := time.NewTicker(min(max(w.cfg.Profiles.withDefaults().Delay/4, 10*time.Millisecond), time.Minute))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					w.decideProfiles(ctx)
				}
			}
		})
	}
	wg.Go(func() {
		var tick <-chan time.Time
		if w.cfg.ReconcileInterval > 0 {
			t := time.NewTicker(w.cfg.ReconcileInterval)
			defer t.Stop()
			tick = t.C
		}
		first := true
		for {
			if n, err := w.Reconcile(ctx); err != nil && ctx.Err() == nil {
				w.log.WithError(err).Warn("reconciliation incomplete")
			} else if n > 0 {
				w.log.WithField("queued", n).Info("reconciliation queued operations")
			}
			if first {
				close(w.startReconciled)
				first = false
			}
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		}
	})
	wg.Wait()
}

// Reconcile lists the tags of every enabled repository and queues those whose manifest has
// no operation yet and is an image. It returns how many it queued.
func (w *Watcher) Reconcile(ctx context.Context) (int, error) {
	ps, err := w.cfg.Policies.List(ctx, w.cfg.Registry)
	if err != nil {
		return 0, err
	}
	var (
		queued int
		errs   []error
	)
	for _, p := range ps {
		if !p.Enabled {
			continue
		}
		tags, err := w.tags.Tags(ctx, p.Repository)
		if errdefs.IsNotFound(err) {
			continue // enabled before its first push
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		path := strings.TrimPrefix(p.Repository, w.cfg.Registry+"/")
		for _, tag := range tags {
			if convert.IsFallbackTag(tag) {
				continue
			}
			desc, err := w.cfg.Remote.Resolve(ctx, p.Repository+":"+tag)
			if errdefs.IsNotFound(err) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("resolve %s:%s: %w", p.Repository, tag, err))
				continue
			}
			ok, err := w.consider(ctx, Push{Repository: path, Tag: tag, Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}, "reconcile", true)
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				queued++
			}
		}
	}
	return queued, errors.Join(errs...)
}

// consider queues p if its repository is enabled (unless known enabled), it has no operation
// yet and it is an image. It reports whether it queued one.
func (w *Watcher) consider(ctx context.Context, p Push, trigger string, enabled bool) (bool, error) {
	repo := w.cfg.Registry + "/" + p.Repository
	req := operation.Request{Repository: repo, Tag: p.Tag, Digest: p.Digest, Trigger: trigger}
	log := w.log.WithFields(logrus.Fields{"image": req.Image(), "digest": p.Digest, "trigger": trigger})
	if w.queue.Has(req) {
		return false, nil
	}
	if !enabled {
		pol, err := w.cfg.Policies.Get(ctx, repo)
		if err != nil {
			return false, err
		}
		if !pol.Enabled {
			log.Debug("push ignored: automatic creation is not enabled for the repository")
			return false, nil
		}
	}
	kind, err := w.classify(ctx, repo, ocispec.Descriptor{MediaType: p.MediaType, Digest: p.Digest, Size: p.Size})
	if err != nil {
		// Queue it anyway: the operation classifies it again before converting.
		log.WithError(err).Warn("could not read the pushed manifest; queued to be checked when it runs")
	} else if kind != convert.KindImage {
		log.WithField("kind", kind.String()).Debug("push ignored: not an image to convert")
		return false, nil
	}
	_, created, err := w.queue.Submit(req)
	return created, err
}

// classify says what the manifest desc of repo is, reading it once per digest.
func (w *Watcher) classify(ctx context.Context, repo string, desc ocispec.Descriptor) (convert.ManifestKind, error) {
	w.mu.Lock()
	k, ok := w.kinds[desc.Digest]
	w.mu.Unlock()
	if ok {
		return k, nil
	}
	ref := repo + "@" + desc.Digest.String()
	var raw []byte
	var err error
	if desc.Size > 0 && desc.MediaType != "" {
		raw, err = w.cfg.Remote.FetchManifest(ctx, ref, desc)
	}
	if raw == nil {
		// No size and type from the caller, or wrong ones (an event is only a claim): ask
		// the registry.
		d, rerr := w.cfg.Remote.Resolve(ctx, ref)
		if rerr != nil {
			return 0, errors.Join(err, rerr)
		}
		desc = d
		if raw, err = w.cfg.Remote.FetchManifest(ctx, ref, desc); err != nil {
			return 0, err
		}
	}
	k = convert.ClassifyManifest(desc.MediaType, raw)
	w.mu.Lock()
	if len(w.kinds) >= maxKinds {
		clear(w.kinds)
	}
	w.kinds[desc.Digest] = k
	w.mu.Unlock()
	return k, nil
}

// tagVisibleGrace is how long after its event a tag that does not resolve is retried rather
// than taken as deleted.
const tagVisibleGrace = 30 * time.Second

// work runs one operation: the conversion of op's tag, if it still names op's digest and
// the repository is still enabled.
func (w *Watcher) work(ctx context.Context, op operation.Operation, progress func(operation.Progress)) (string, error) {
	if op.Manual() {
		return w.workCreate(ctx, op, progress)
	}
	pol, err := w.cfg.Policies.Get(ctx, op.Repository)
	if err != nil {
		return "", err
	}
	if !pol.Enabled {
		return "skipped: automatic creation was disabled for " + op.Repository, nil
	}
	now, err := w.cfg.Remote.Resolve(ctx, op.Image())
	if errdefs.IsNotFound(err) && time.Since(op.Created) < tagVisibleGrace {
		// The registry may notify before the tag it just pushed resolves: try again.
		return "", fmt.Errorf("the tag %s does not resolve yet: %v", op.Image(), err)
	}
	if errdefs.IsNotFound(err) {
		return "skipped: the tag no longer exists", nil
	}
	if err != nil {
		return "", err
	}
	if now.Digest != op.Digest {
		kind, err := w.classify(ctx, op.Repository, now)
		if err != nil {
			return "", err
		}
		if kind == convert.KindBinding {
			return fmt.Sprintf("nothing to do: the tag names the binding index %s", now.Digest), nil
		}
		w.requeue(ctx, op, now)
		return fmt.Sprintf("superseded: the tag now names %s, which has its own operation", now.Digest), nil
	}
	kind, err := w.classify(ctx, op.Repository, now)
	if err != nil {
		return "", err
	}
	if kind != convert.KindImage {
		return fmt.Sprintf("skipped: %s is a %s, not an image to convert", op.Digest, kind), nil
	}

	pr := newProgressTracker(progress)
	c, err := w.cfg.NewConverter(pr.update)
	if err != nil {
		return "", err
	}
	res, err := c.Create(ctx, op.Image(), convert.CreateOptions{Bind: true})
	if errors.Is(err, convert.ErrTagMoved) {
		d, rerr := w.cfg.Remote.Resolve(ctx, op.Image())
		if rerr == nil {
			if kind, cerr := w.classify(ctx, op.Repository, d); cerr == nil && kind == convert.KindBinding {
				// Another watcher (or an operator's rill create) bound the tag meanwhile.
				return fmt.Sprintf("the tag was bound meanwhile by another instance or rill create (it names the binding index %s); artifacts of this run that it does not bind are referrers only", d.Digest), nil
			}
			w.requeue(ctx, op, d)
		}
		return "the tag moved during the conversion: the artifacts are referrers only, the newer push gets its own operation", nil
	}
	if err != nil {
		return "", err
	}
	return summary(res), nil
}

// requeue queues the manifest the tag of op names now.
func (w *Watcher) requeue(ctx context.Context, op operation.Operation, now ocispec.Descriptor) {
	path := strings.TrimPrefix(op.Repository, w.cfg.Registry+"/")
	if _, err := w.consider(ctx, Push{Repository: path, Tag: op.Tag, Digest: now.Digest, MediaType: now.MediaType, Size: now.Size}, "newer push", true); err != nil {
		w.log.WithError(err).WithField("image", op.Image()).Warn("could not queue the newer push; the next reconciliation will")
	}
}

func summary(res *convert.CreateResult) string {
	var created, existing []string
	for _, a := range res.Artifacts {
		s := fmt.Sprintf("%s %s", a.Platform, a.Artifact.Digest)
		if a.Existing {
			existing = append(existing, s)
		} else {
			created = append(created, s)
		}
	}
	var parts []string
	if len(created) > 0 {
		parts = append(parts, "created "+strings.Join(created, ", "))
	}
	if len(existing) > 0 {
		parts = append(parts, "existing "+strings.Join(existing, ", "))
	}
	switch {
	case res.Bound && res.Unchanged:
		parts = append(parts, "already bound; nothing to do")
	case res.Bound:
		parts = append(parts, "bound: the tag names the index "+res.Index.Digest.String())
	case res.Unchanged:
		parts = append(parts, "nothing to do")
	default:
		parts = append(parts, "referrers only (not bound to a tag)")
	}
	return strings.Join(parts, "; ")
}

// progressTracker sums convert's per-layer progress into an operation's.
type progressTracker struct {
	mu     sync.Mutex
	report func(operation.Progress)
	layers map[string]*layerState
	counts map[string]int // platform → layers
	phase  string
}

type layerState struct {
	read, size int64
	done       bool
}

func newProgressTracker(report func(operation.Progress)) *progressTracker {
	return &progressTracker{report: report, layers: map[string]*layerState{}, counts: map[string]int{}}
}

func (p *progressTracker) update(ev convert.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := fmt.Sprintf("%s/%d", ev.Platform, ev.Index)
	l := p.layers[key]
	if l == nil {
		l = &layerState{}
		p.layers[key] = l
	}
	p.counts[ev.Platform] = ev.Count
	l.size = max(l.size, ev.Size)
	l.read = max(l.read, ev.Read)
	if ev.Phase == convert.PhaseDone {
		l.done, l.read = true, l.size
	}
	p.phase = string(ev.Phase)
	var out operation.Progress
	out.Phase = p.phase
	for _, n := range p.counts {
		out.Layers += n
	}
	for _, l := range p.layers {
		out.Bytes += l.size
		out.BytesRead += l.read
		if l.done {
			out.LayersDone++
		}
	}
	p.report(out)
}
