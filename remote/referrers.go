package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxReferrerPages bounds how many Link-paginated pages of referrers are followed.
const maxReferrerPages = 64

// FallbackTag is the OCI tag-schema fallback tag holding the referrers index of subject:
// "<alg>-<hex>".
func FallbackTag(subject digest.Digest) string {
	return subject.Algorithm().String() + "-" + subject.Encoded()
}

// Referrers lists the manifests in the repository of ref whose subject is the manifest
// subject, with the given artifactType (all when empty), in the order the registry lists them.
// It uses the referrers API, and the tag-schema fallback when the registry has no such API.
// The filter is applied here too: registries may ignore it. A host that lists none (a mirror
// that copied the image but not its artifacts) passes the question to the next host, the
// upstream last; the list is empty only when the last host asked lists none.
func (r *Registry) Referrers(ctx context.Context, ref string, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	rr, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("referrers of %q: %w", subject, errInvalidArgument)
	}
	ctx = pullScope(ctx, rr)
	var out []ocispec.Descriptor
	err = r.eachEndpoint(ctx, rr, docker.HostCapabilityPull, func(ep *endpoint) error {
		descs, err := r.referrersAPI(ctx, ep, rr, subject, artifactType)
		if errors.Is(err, errNoReferrersAPI) {
			descs, err = r.referrersFallback(ctx, ep, rr, subject, artifactType)
		}
		if err == nil {
			descs, err = r.filterReferrers(ctx, rr, descs, artifactType)
		}
		if err != nil {
			return err
		}
		if len(descs) == 0 {
			log.G(ctx).WithFields(log.Fields{"host": ep.host.Host, "subject": subject, "artifactType": artifactType}).Debug("host lists no referrers; asking the next one")
			return errNoReferrersListed
		}
		out = descs
		return nil
	})
	if errors.Is(err, errNoReferrersListed) {
		return []ocispec.Descriptor{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("referrers of %s in %s: %w", subject, rr.host+"/"+rr.repo, err)
	}
	return out, nil
}

// errNoReferrersListed says a host listed no referrers of the type asked for: the next host
// may have them.
var errNoReferrersListed = errors.New("no referrers listed")

// filterReferrers keeps the descriptors of artifactType. Some registries (go-containerregistry's)
// report the config media type as artifactType even when the manifest has its own: entries
// whose artifactType is empty or an image config type are checked against the manifest.
func (r *Registry) filterReferrers(ctx context.Context, rr repoRef, descs []ocispec.Descriptor, artifactType string) ([]ocispec.Descriptor, error) {
	if artifactType == "" {
		return descs, nil
	}
	out := []ocispec.Descriptor{}
	for _, d := range descs {
		if d.ArtifactType == artifactType {
			out = append(out, d)
			continue
		}
		switch d.ArtifactType {
		case "", ocispec.MediaTypeImageConfig, ocispec.MediaTypeEmptyJSON, images.MediaTypeDockerSchema2Config:
		default:
			continue
		}
		if d.MediaType != ocispec.MediaTypeImageManifest {
			continue
		}
		b, err := r.FetchManifest(ctx, rr.host+"/"+rr.repo, d)
		if err != nil {
			return nil, err
		}
		var m struct {
			ArtifactType string `json:"artifactType"`
		}
		if json.Unmarshal(b, &m) == nil && m.ArtifactType == artifactType {
			d.ArtifactType = m.ArtifactType
			out = append(out, d)
		}
	}
	return out, nil
}

var errNoReferrersAPI = errors.New("registry has no referrers API")

func (r *Registry) referrersAPI(ctx context.Context, ep *endpoint, rr repoRef, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	if !ep.host.Capabilities.Has(docker.HostCapabilityReferrers) {
		return nil, errNoReferrersAPI
	}
	q := url.Values{}
	if artifactType != "" {
		q.Set("artifactType", artifactType)
	}
	next := ep.url(rr.repo, "referrers/"+subject.String(), q)
	var all []ocispec.Descriptor
	for page := 0; next != nil; page++ {
		if page == maxReferrerPages {
			return nil, fmt.Errorf("more than %d pages of referrers", maxReferrerPages)
		}
		u := next
		next = nil
		err := r.withRetry(ctx, ep.host.Host, "referrers", func(ctx context.Context) error {
			req := &request{ep: ep, repo: rr.repo, method: http.MethodGet, u: u, op: "referrers", header: http.Header{"Accept": {ocispec.MediaTypeImageIndex}}}
			resp, err := r.send(ctx, req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound && page == 0 {
				drain(resp)
				return errNoReferrersAPI
			}
			if resp.StatusCode != http.StatusOK {
				return statusError(req, resp)
			}
			if mt := mediaTypeOf(resp.Header.Get("Content-Type")); page == 0 && mt != ocispec.MediaTypeImageIndex {
				// Something answered 200 that is not the referrers API (a proxy's
				// catch-all page, say): treat as absent.
				drain(resp)
				return errNoReferrersAPI
			}
			b, err := readLimited(resp.Body, r.opts.maxManifestSize)
			if err != nil {
				return truncatedOrTooLarge(fmt.Errorf("GET %s: %w", redactURL(u), err))
			}
			descs, err := ParseReferrers(b, "")
			if err != nil {
				return fmt.Errorf("GET %s: %w", redactURL(u), err)
			}
			all = append(all, descs...)
			if l := nextLink(resp.Header.Get("Link")); l != "" {
				if next, err = resolveLocation(u, l); err != nil {
					return fmt.Errorf("GET %s: Link: %w", redactURL(u), err)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return all, nil
}

// nextLink extracts the target of rel="next" from a Link header.
func nextLink(h string) string {
	for _, l := range strings.Split(h, ",") {
		target, params, ok := strings.Cut(l, ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		target = strings.TrimSpace(target)
		if strings.HasPrefix(target, "<") && strings.HasSuffix(target, ">") {
			return target[1 : len(target)-1]
		}
	}
	return ""
}

func (r *Registry) referrersFallback(ctx context.Context, ep *endpoint, rr repoRef, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	b, err := r.getFallbackIndex(ctx, ep, rr, subject)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseReferrers(b, "")
}

// getFallbackIndex fetches the tag-schema fallback index of subject; NotFound when absent.
func (r *Registry) getFallbackIndex(ctx context.Context, ep *endpoint, rr repoRef, subject digest.Digest) ([]byte, error) {
	var body []byte
	u := ep.url(rr.repo, "manifests/"+FallbackTag(subject), nil)
	err := r.withRetry(ctx, ep.host.Host, "referrers_fallback", func(ctx context.Context) error {
		req := &request{ep: ep, repo: rr.repo, method: http.MethodGet, u: u, op: "referrers_fallback", header: http.Header{"Accept": {ocispec.MediaTypeImageIndex}}}
		resp, err := r.send(ctx, req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return statusError(req, resp)
		}
		b, err := readLimited(resp.Body, r.opts.maxManifestSize)
		if err != nil {
			return truncatedOrTooLarge(fmt.Errorf("GET %s: %w", redactURL(u), err))
		}
		body = b
		return nil
	})
	return body, err
}

// ParseReferrers parses a referrers index (from the API or the fallback tag) and returns its
// manifests whose artifactType is artifactType (all when empty). Entries with an invalid
// digest or size are dropped.
func ParseReferrers(b []byte, artifactType string) ([]ocispec.Descriptor, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("parse referrers index: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("parse referrers index: schemaVersion %d: %w", idx.SchemaVersion, errdefs.ErrInvalidArgument)
	}
	if idx.MediaType != "" && idx.MediaType != ocispec.MediaTypeImageIndex {
		return nil, fmt.Errorf("parse referrers index: media type %q: %w", idx.MediaType, errdefs.ErrInvalidArgument)
	}
	out := []ocispec.Descriptor{}
	for _, d := range idx.Manifests {
		if d.Digest.Validate() != nil || d.Size <= 0 {
			continue
		}
		if artifactType != "" && d.ArtifactType != artifactType {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}
