package snapshotter

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/remote"
	"github.com/rillstream/rill/snapshotter/decision"
)

// Trust modes for streaming artifacts found only as referrers (decision.TrustBound,
// decision.TrustReferrers).
const (
	TrustBound     = decision.TrustBound
	TrustReferrers = decision.TrustReferrers
)

// imageTTL bounds how long a resolved image is remembered: one pull's layers share it.
const imageTTL = 2 * time.Minute

// imageFresh is how long a resolved image is reused without a look at the registry. Older, it
// is reused only while its reference still names what it named (one HEAD request): an
// artifact rebuilt (`rill create --force`) or a tag moved since is seen by the next pull,
// while the layers of one pull, prepared within moments of each other, share one resolution.
const imageFresh = 5 * time.Second

// RegistryResolver is the Resolver of the daemon: it reads images, their bindings and
// referrers from the registry through remote/.
type RegistryResolver struct {
	reg    *remote.Registry
	base   context.Context // lifetime of blob readers (not of one Prepare call)
	policy decision.Policy
	fresh  time.Duration // imageFresh; tests shorten it

	mu     sync.Mutex
	images map[string]*imageEntry
}

var _ Resolver = (*RegistryResolver)(nil)

// NewRegistryResolver makes a resolver. base is the daemon's context: blob readers live
// until it ends. platformSpecs are the platforms that stream ("linux/amd64").
func NewRegistryResolver(base context.Context, reg *remote.Registry, platformSpecs []string, trust string) (*RegistryResolver, error) {
	var ps []ocispec.Platform
	for _, s := range platformSpecs {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("streaming platform %q: %w", s, err)
		}
		ps = append(ps, p)
	}
	if trust != TrustBound && trust != TrustReferrers {
		return nil, fmt.Errorf("streaming trust %q: want %q or %q", trust, TrustBound, TrustReferrers)
	}
	policy := decision.Policy{Platforms: platforms.Any(ps...), Trust: trust}
	return &RegistryResolver{reg: reg, base: base, policy: policy, fresh: imageFresh, images: map[string]*imageEntry{}}, nil
}

// image is what the resolver learned about one pulled image (one platform manifest M), and
// what it decided for it.
type image struct {
	repo    string // repository reference without tag or digest, for blob reads
	facts   decision.Facts
	decided decision.Image
}

type imageEntry struct {
	done    chan struct{}
	img     *image
	err     error
	expires time.Time
	checked time.Time // when img was resolved, or last found still current
}

// Resolve decides whether the layer l streams.
func (r *RegistryResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	img, err := r.image(ctx, l)
	if err != nil {
		return RemoteLayer{}, err
	}
	stream, reason, ok := decision.DecideLayer(img.facts, img.decided, l.Layer)
	if !ok {
		return RemoteLayer{}, NotStreamable(reason)
	}
	rl, err := r.remoteLayer(img.repo, stream.Blob, stream.TOC, reason)
	if stream.Artifact != "" {
		rl.Prefetch = img.decided.Profile
		rl.Artifact = stream.Artifact
		rl.Original = originalOf(stream.Blob)
	}
	return rl, err
}

// originalOf reads what an artifact layer must decompress to; nil when its annotations do not
// say (the layer then is not verified against the original).
func originalOf(layer ocispec.Descriptor) *rillfs.Original {
	d, err := digest.Parse(layer.Annotations[artifact.AnnotationOriginalDiffID])
	if err != nil {
		return nil
	}
	n, err := strconv.ParseInt(layer.Annotations[artifact.AnnotationOriginalSize], 10, 64)
	if err != nil || n < 0 {
		return nil
	}
	return &rillfs.Original{DiffID: d, Size: n}
}

func (r *RegistryResolver) remoteLayer(repo string, desc ocispec.Descriptor, toc digest.Digest, reason string) (RemoteLayer, error) {
	ref := repo + "@" + desc.Digest.String()
	blob, err := r.OpenBlob(r.base, ref, desc)
	if err != nil {
		return RemoteLayer{}, err
	}
	return RemoteLayer{Ref: ref, Desc: desc, TOCDigest: toc, Reason: reason, Blob: blob}, nil
}

// OpenBlob opens desc in the repository of ref; no request is made before the first read.
func (r *RegistryResolver) OpenBlob(_ context.Context, ref string, desc ocispec.Descriptor) (Blob, error) {
	return r.reg.BlobReader(r.base, ref, desc)
}

// image resolves the image a layer belongs to once per pull: concurrent and later Prepares of
// the same image share the answer for imageTTL.
func (r *RegistryResolver) image(ctx context.Context, l LayerLabels) (*image, error) {
	key := l.ImageRef + "|" + l.Manifest.String()
	r.mu.Lock()
	now := time.Now()
	for k, e := range r.images {
		if isDone(e) && now.After(e.expires) {
			delete(r.images, k)
		}
	}
	e, ok := r.images[key]
	if ok && isDone(e) && e.err == nil && now.Sub(e.checked) > r.fresh {
		r.mu.Unlock()
		current := r.stillNames(ctx, l.ImageRef, e.img)
		r.mu.Lock()
		if current {
			e.checked = time.Now()
		} else if r.images[key] == e {
			delete(r.images, key)
		}
		e, ok = r.images[key]
	}
	if !ok {
		e = &imageEntry{done: make(chan struct{})}
		r.images[key] = e
		r.mu.Unlock()
		e.img, e.err = r.resolveImage(ctx, l)
		r.mu.Lock()
		e.checked = time.Now()
		r.mu.Unlock()
		e.expires = time.Now().Add(imageTTL)
		if e.err != nil {
			e.expires = time.Now() // errors are not remembered
		}
		close(e.done)
		return e.img, e.err
	}
	r.mu.Unlock()
	select {
	case <-e.done:
		return e.img, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stillNames reports whether ref still names what it named when img was resolved.
func (r *RegistryResolver) stillNames(ctx context.Context, ref string, img *image) bool {
	if img == nil || img.facts.Top.Digest == "" {
		return false
	}
	top, err := r.reg.Resolve(ctx, ref)
	if err != nil {
		log.G(ctx).WithError(err).WithField("ref", ref).Debug("cannot check the resolved image against the registry; resolving it again")
		return false
	}
	return top.Digest == img.facts.Top.Digest
}

func isDone(e *imageEntry) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// resolveImage gathers the facts of the image l belongs to, in order, stopping where the rest
// cannot change the decision, and decides for it (decision.DecideImage). An error means the
// registry could not be asked (the layer is pulled in full, and nothing is remembered).
func (r *RegistryResolver) resolveImage(ctx context.Context, l LayerLabels) (*image, error) {
	named, err := reference.ParseNormalizedNamed(l.ImageRef)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", l.ImageRef, err)
	}
	img := &image{repo: named.Name()}
	img.facts, err = decision.Gather(ctx, r.reg, l.ImageRef, l.Manifest, r.policy)
	if err != nil {
		return nil, err
	}
	img.decided = decision.DecideImage(img.facts, l.Manifest, r.policy)
	entry := log.G(ctx).WithField("ref", l.ImageRef)
	for _, err := range img.decided.Rejected {
		entry.WithError(err).Warn("streaming artifact unusable")
	}
	if img.decided.ProfileErr != nil {
		entry.WithError(img.decided.ProfileErr).Warn("streaming artifact's prefetch profile ignored or cut")
	}
	return img, nil
}
