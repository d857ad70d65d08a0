package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
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
)

// Reasons a layer streams.
const (
	reasonEStargz  = "estargz"
	reasonBound    = "bound-artifact"
	reasonReferrer = "referrer"
)

// Trust modes for streaming artifacts found only as referrers.
const (
	// TrustBound streams an artifact only when the pulled reference binds it (the index at
	// the tag names it for the manifest): whoever can move the tag could change the image
	// anyway.
	TrustBound = "bound"
	// TrustReferrers also streams artifacts attached to the manifest as referrers in its own
	// repository, when their layers match the manifest's (the ACR model).
	TrustReferrers = "referrers"
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
	reg       *remote.Registry
	base      context.Context // lifetime of blob readers (not of one Prepare call)
	platforms platforms.MatchComparer
	trust     string
	fresh     time.Duration // imageFresh; tests shorten it

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
	return &RegistryResolver{reg: reg, base: base, platforms: platforms.Any(ps...), trust: trust, fresh: imageFresh, images: map[string]*imageEntry{}}, nil
}

// image is what the resolver learned about one pulled image (one platform manifest M).
type image struct {
	repo     string // repository reference without tag or digest, for blob reads
	manifest ocispec.Manifest
	// artifact is M's streaming artifact, when one is bound or trusted; reason says which.
	artifact *ocispec.Manifest
	reason   string
	// notStreamable is set when nothing of the image streams, with the reason.
	notStreamable string
	// profile is the artifact's prefetch profile.
	profile []string
	// artifactDigest is the artifact's digest (reported with a recorded profile).
	artifactDigest digest.Digest
	// top is what the pulled reference named when the image was resolved.
	top digest.Digest
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
	if img.notStreamable != "" {
		return RemoteLayer{}, NotStreamable(img.notStreamable)
	}
	i := layerIndex(img.manifest, l.Layer)
	if i < 0 {
		return RemoteLayer{}, NotStreamable("layer-not-in-manifest")
	}
	layer := img.manifest.Layers[i]
	if toc := layer.Annotations[artifact.AnnotationTOCDigest]; toc != "" {
		d, err := digest.Parse(toc)
		if err != nil {
			return RemoteLayer{}, NotStreamable("bad-toc-annotation")
		}
		return r.remoteLayer(img.repo, layer, d, reasonEStargz)
	}
	if img.artifact == nil {
		return RemoteLayer{}, NotStreamable(img.reason)
	}
	streamed := img.artifact.Layers[i]
	d, err := digest.Parse(streamed.Annotations[artifact.AnnotationTOCDigest])
	if err != nil {
		return RemoteLayer{}, NotStreamable("bad-toc-annotation")
	}
	rl, err := r.remoteLayer(img.repo, streamed, d, img.reason)
	rl.Prefetch = img.profile
	rl.Artifact = img.artifactDigest
	rl.Original = originalOf(streamed)
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

func layerIndex(m ocispec.Manifest, layer digest.Digest) int {
	for i, l := range m.Layers {
		if l.Digest == layer {
			return i
		}
	}
	return -1
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
	if img == nil || img.top == "" {
		return false
	}
	top, err := r.reg.Resolve(ctx, ref)
	if err != nil {
		log.G(ctx).WithError(err).WithField("ref", ref).Debug("cannot check the resolved image against the registry; resolving it again")
		return false
	}
	return top.Digest == img.top
}

func isDone(e *imageEntry) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

func (r *RegistryResolver) resolveImage(ctx context.Context, l LayerLabels) (*image, error) {
	named, err := reference.ParseNormalizedNamed(l.ImageRef)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", l.ImageRef, err)
	}
	img := &image{repo: named.Name()}
	entry := log.G(ctx).WithField("ref", l.ImageRef)

	// The pulled reference: a manifest (M itself) or an index that lists M.
	top, err := r.reg.Resolve(ctx, l.ImageRef)
	if err != nil {
		return nil, err
	}
	img.top = top.Digest
	var index *ocispec.Index
	if isIndex(top.MediaType) {
		b, err := r.reg.FetchManifest(ctx, l.ImageRef, top)
		if err != nil {
			return nil, err
		}
		index = new(ocispec.Index)
		if err := json.Unmarshal(b, index); err != nil {
			return nil, fmt.Errorf("decode index %s: %w", top.Digest, err)
		}
	}
	// M: the platform manifest containerd unpacks.
	var mDesc ocispec.Descriptor
	switch {
	case index != nil && l.Manifest == "":
		d, err := r.selectPlatform(index)
		if err != nil {
			img.notStreamable = "no-streaming-platform-in-index"
			return img, nil
		}
		mDesc = d
	case index != nil:
		d, ok := findManifest(index, l.Manifest)
		if !ok {
			// The tag moved since containerd resolved it: decide nothing from what it names now.
			img.notStreamable = "manifest-not-in-index"
			return img, nil
		}
		mDesc = d
	case l.Manifest != "" && top.Digest != l.Manifest:
		img.notStreamable = "reference-moved"
		return img, nil
	default:
		mDesc = top
	}
	mBytes, err := r.reg.FetchManifest(ctx, img.repo+"@"+mDesc.Digest.String(), mDesc)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(mBytes, &img.manifest); err != nil {
		return nil, fmt.Errorf("decode manifest %s: %w", mDesc.Digest, err)
	}
	cfgBytes, err := r.reg.FetchBlob(ctx, img.repo+"@"+mDesc.Digest.String(), img.manifest.Config)
	if err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		return nil, fmt.Errorf("decode image config: %w", err)
	}
	if !r.platforms.Match(cfg.Platform) {
		img.notStreamable = "platform " + platforms.Format(cfg.Platform)
		return img, nil
	}

	// A bound artifact: the index at the pulled reference names it for M.
	if index != nil {
		if d, ok := findManifest(index, mDesc.Digest); ok && d.Annotations[artifact.AnnotationBinding] != "" {
			art, err := r.artifact(ctx, img, mDesc.Digest, d.Annotations[artifact.AnnotationBinding], index)
			if err != nil {
				entry.WithError(err).Warn("bound streaming artifact unusable")
				img.reason = "bound-artifact-invalid"
				return img, nil
			}
			img.artifact, img.reason = art, reasonBound
			img.artifactDigest, _ = digest.Parse(d.Annotations[artifact.AnnotationBinding])
			img.profile = r.profile(ctx, art)
			return img, nil
		}
	}
	if r.trust != TrustReferrers {
		img.reason = "no-bound-artifact"
		return img, nil
	}
	refs, err := r.reg.Referrers(ctx, img.repo, mDesc.Digest, artifact.ArtifactType)
	if err != nil {
		entry.WithError(err).Warn("cannot list referrers")
		img.reason = "referrers-error"
		return img, nil
	}
	// Deterministic choice: newest by creation annotation, then by digest.
	sort.SliceStable(refs, func(i, j int) bool {
		ci, cj := refs[i].Annotations[ocispec.AnnotationCreated], refs[j].Annotations[ocispec.AnnotationCreated]
		if ci != cj {
			return ci > cj
		}
		return refs[i].Digest < refs[j].Digest
	})
	for _, ref := range refs {
		art, err := r.artifact(ctx, img, mDesc.Digest, ref.Digest.String(), nil)
		if err != nil {
			entry.WithError(err).WithField("artifact", ref.Digest).Warn("referrer unusable")
			continue
		}
		img.artifact, img.reason = art, reasonReferrer
		img.artifactDigest = ref.Digest
		img.profile = r.profile(ctx, art)
		return img, nil
	}
	img.reason = "no-artifact"
	return img, nil
}

// artifact fetches the streaming artifact s of manifest m and checks it against the contract:
// it names m as its subject, is of rill's artifact type, and its layers convert m's layers,
// in order. A bound artifact must also be listed in the index that binds it.
func (r *RegistryResolver) artifact(ctx context.Context, img *image, m digest.Digest, s string, bindingIndex *ocispec.Index) (*ocispec.Manifest, error) {
	sd, err := digest.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("artifact digest %q: %w", s, err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: sd}
	if bindingIndex != nil {
		d, ok := findManifest(bindingIndex, sd)
		if !ok {
			return nil, errors.New("the binding index does not list the artifact")
		}
		desc = d
	}
	b, err := r.reg.FetchManifest(ctx, img.repo+"@"+sd.String(), desc)
	if err != nil {
		return nil, err
	}
	var art ocispec.Manifest
	if err := json.Unmarshal(b, &art); err != nil {
		return nil, fmt.Errorf("decode artifact: %w", err)
	}
	if art.Subject == nil || art.Subject.Digest != m {
		return nil, fmt.Errorf("artifact %s does not name %s as its subject", sd, m)
	}
	if art.ArtifactType != artifact.ArtifactType {
		return nil, fmt.Errorf("artifact %s is of type %q, not %s", sd, art.ArtifactType, artifact.ArtifactType)
	}
	if len(art.Layers) != len(img.manifest.Layers) {
		return nil, fmt.Errorf("artifact %s has %d layers, the image %d", sd, len(art.Layers), len(img.manifest.Layers))
	}
	for i, l := range art.Layers {
		if l.Annotations[artifact.AnnotationOriginalDigest] != img.manifest.Layers[i].Digest.String() {
			return nil, fmt.Errorf("artifact %s layer %d converts %s, not the image's %s", sd, i, l.Annotations[artifact.AnnotationOriginalDigest], img.manifest.Layers[i].Digest)
		}
		if l.Annotations[artifact.AnnotationTOCDigest] == "" {
			return nil, fmt.Errorf("artifact %s layer %d has no TOC digest", sd, i)
		}
	}
	return &art, nil
}

func (r *RegistryResolver) selectPlatform(index *ocispec.Index) (ocispec.Descriptor, error) {
	for _, m := range index.Manifests {
		if m.Platform != nil && r.platforms.Match(*m.Platform) {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, errors.New("no manifest for a streaming platform")
}

// profile decodes the artifact's prefetch profile; a broken one only costs prefetch.
func (r *RegistryResolver) profile(ctx context.Context, art *ocispec.Manifest) []string {
	encoded := art.Annotations[artifact.AnnotationPrefetch]
	if encoded == "" {
		return nil
	}
	paths, err := artifact.DecodeProfile(encoded)
	if err != nil {
		log.G(ctx).WithError(err).Warn("streaming artifact's prefetch profile ignored")
		return nil
	}
	if len(paths) > artifact.MaxProfilePaths {
		// A profile of a million paths prefetches no more than the first ones.
		log.G(ctx).WithField("paths", len(paths)).Warnf("streaming artifact's prefetch profile cut to its first %d paths", artifact.MaxProfilePaths)
		paths = paths[:artifact.MaxProfilePaths]
	}
	return paths
}

func isIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || strings.HasSuffix(mediaType, "manifest.list.v2+json")
}

func findManifest(index *ocispec.Index, d digest.Digest) (ocispec.Descriptor, bool) {
	if index == nil {
		return ocispec.Descriptor{}, false
	}
	for _, m := range index.Manifests {
		if m.Digest == d {
			return m, true
		}
	}
	return ocispec.Descriptor{}, false
}
