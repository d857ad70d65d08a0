package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// manifestAccept lists the manifest media types rill understands.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	images.MediaTypeDockerSchema2Manifest,
	images.MediaTypeDockerSchema2ManifestList,
}, ", ")

// eachEndpoint runs fn on the endpoints able to do want, in order (mirrors, then upstream),
// until one succeeds; it returns the last error otherwise.
func (r *Registry) eachEndpoint(ctx context.Context, rr repoRef, want docker.HostCapabilities, fn func(ep *endpoint) error) error {
	eps, err := r.endpoints(ctx, rr.host, want)
	if err != nil {
		return err
	}
	var last error
	for _, ep := range eps {
		last = fn(ep)
		if last == nil || ctx.Err() != nil {
			return last
		}
	}
	return last
}

func pullScope(ctx context.Context, rr repoRef) context.Context {
	return docker.WithScope(ctx, "repository:"+rr.repo+":pull")
}

// Resolve returns the descriptor of the manifest or index ref names (by tag or digest).
func (r *Registry) Resolve(ctx context.Context, ref string) (ocispec.Descriptor, error) {
	rr, err := parseRef(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	ctx = pullScope(ctx, rr)
	var desc ocispec.Descriptor
	err = r.eachEndpoint(ctx, rr, docker.HostCapabilityResolve, func(ep *endpoint) error {
		return r.withRetry(ctx, ep.host.Host, "resolve", func(ctx context.Context) error {
			d, err := r.resolveOn(ctx, ep, rr)
			desc = d
			return err
		})
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("resolve %s: %w", rr, err)
	}
	return desc, nil
}

// resolveOn asks one endpoint with HEAD, and with GET when HEAD does not tell the digest.
func (r *Registry) resolveOn(ctx context.Context, ep *endpoint, rr repoRef) (ocispec.Descriptor, error) {
	req := &request{
		ep: ep, repo: rr.repo, method: http.MethodHead, u: ep.url(rr.repo, "manifests/"+rr.object(), nil), op: "resolve",
		header: http.Header{"Accept": {manifestAccept}},
	}
	resp, err := r.send(ctx, req)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	drain(resp)
	if resp.StatusCode == http.StatusOK {
		d, derr := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		size := resp.ContentLength
		mt := mediaTypeOf(resp.Header.Get("Content-Type"))
		if derr == nil && size > 0 && mt != "" && (rr.digest == "" || rr.digest == d) {
			return ocispec.Descriptor{MediaType: mt, Digest: d, Size: size}, nil
		}
	} else if resp.StatusCode != http.StatusMethodNotAllowed {
		return ocispec.Descriptor{}, statusError(req, resp)
	}
	req.method = http.MethodGet
	resp, err = r.send(ctx, req)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, statusError(req, resp)
	}
	body, err := readLimited(resp.Body, r.opts.maxManifestSize)
	if err != nil {
		return ocispec.Descriptor{}, truncatedOrTooLarge(fmt.Errorf("GET %s: %w", redactURL(req.u), err))
	}
	d := digest.FromBytes(body)
	if rr.digest != "" && rr.digest != d {
		return ocispec.Descriptor{}, fmt.Errorf("GET %s: content has digest %s: %w", redactURL(req.u), d, errdefs.ErrDataLoss)
	}
	mt := mediaTypeOf(resp.Header.Get("Content-Type"))
	if mt == "" {
		mt = sniffMediaType(body)
	}
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(body))}, nil
}

func mediaTypeOf(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	switch mt {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList:
		return mt
	}
	return ""
}

// sniffMediaType reads the mediaType field, or tells an index by its manifests.
func sniffMediaType(b []byte) string {
	var m struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	if m.MediaType != "" {
		return m.MediaType
	}
	if m.Manifests != nil {
		return ocispec.MediaTypeImageIndex
	}
	return ocispec.MediaTypeImageManifest
}

// truncatedOrTooLarge classifies an error of readLimited: a body over the size limit is final
// (asking again gets the same body), a body cut short is retried.
func truncatedOrTooLarge(err error) error {
	if errors.Is(err, errdefs.ErrResourceExhausted) {
		return err
	}
	return retryable("truncated", 0, err)
}

// readLimited reads all of r, failing when it holds more than limit bytes.
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("content larger than the limit of %d bytes: %w", limit, errdefs.ErrResourceExhausted)
	}
	return b, nil
}

// FetchManifest fetches the manifest or index desc from the repository of ref, by digest,
// and checks its size (at most the manifest size limit) and digest.
func (r *Registry) FetchManifest(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	return r.fetchVerified(ctx, ref, desc, "manifests/", "manifest", r.opts.maxManifestSize, manifestAccept)
}

// FetchBlob fetches a small blob whole, such as an image config, by digest, and checks its
// size (at most the blob size limit) and digest. Layers are read with BlobReader.
func (r *Registry) FetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	return r.fetchVerified(ctx, ref, desc, "blobs/", "blob", r.opts.maxBlobSize, "")
}

func (r *Registry) fetchVerified(ctx context.Context, ref string, desc ocispec.Descriptor, kind, op string, limit int64, accept string) ([]byte, error) {
	rr, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("fetch %s from %s: bad digest: %w", op, rr, errInvalidArgument)
	}
	if desc.Size > limit {
		return nil, fmt.Errorf("fetch %s %s from %s: %d bytes, more than the limit of %d: %w", op, desc.Digest, rr, desc.Size, limit, errdefs.ErrResourceExhausted)
	}
	if desc.Size > 0 {
		limit = desc.Size
	}
	ctx = pullScope(ctx, rr)
	var body []byte
	err = r.eachEndpoint(ctx, rr, docker.HostCapabilityPull, func(ep *endpoint) error {
		return r.withRetry(ctx, ep.host.Host, op, func(ctx context.Context) error {
			req := &request{ep: ep, repo: rr.repo, method: http.MethodGet, u: ep.url(rr.repo, kind+desc.Digest.String(), nil), op: op}
			if accept != "" {
				req.header = http.Header{"Accept": {accept}}
			}
			resp, err := r.send(ctx, req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return statusError(req, resp)
			}
			b, err := readLimited(resp.Body, limit)
			if err != nil {
				if errors.Is(err, errdefs.ErrResourceExhausted) {
					return fmt.Errorf("GET %s: %w", redactURL(req.u), err)
				}
				return retryable("truncated", 0, fmt.Errorf("GET %s: %w", redactURL(req.u), err))
			}
			if desc.Size > 0 && int64(len(b)) != desc.Size {
				return retryable("bad_response", 0, fmt.Errorf("GET %s: %d bytes, expected %d", redactURL(req.u), len(b), desc.Size))
			}
			if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
				return retryable("bad_response", 0, fmt.Errorf("GET %s: content has digest %s: %w", redactURL(req.u), got, errdefs.ErrDataLoss))
			}
			r.metrics.bytes.WithLabelValues(ep.host.Host, op).Add(float64(len(b)))
			body = b
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("fetch %s %s from %s: %w", op, desc.Digest, rr.host+"/"+rr.repo, err)
	}
	return body, nil
}

// SelectPlatform picks from an index the manifest best matching platform m, as containerd
// orders them; NotFound when none matches.
func SelectPlatform(index []byte, m platforms.MatchComparer) (ocispec.Descriptor, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(index, &idx); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse index: %w: %w", errInvalidArgument, err)
	}
	var cands []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.Platform != nil && m.Match(*d.Platform) && d.Digest.Validate() == nil {
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no manifest in the index matches the platform: %w", errdefs.ErrNotFound)
	}
	sort.SliceStable(cands, func(i, j int) bool { return m.Less(*cands[i].Platform, *cands[j].Platform) })
	return cands[0], nil
}

// resolveLocation resolves a Location header against the request URL.
func resolveLocation(base *url.URL, loc string) (*url.URL, error) {
	if loc == "" {
		return nil, errors.New("response without Location")
	}
	u, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("bad Location: %w", err)
	}
	return base.ResolveReference(u), nil
}
