package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// maxTagPages bounds the pages of one tag listing (a registry that links pages in a circle
// must not keep us forever).
const maxTagPages = 1000

// maxTagPageSize bounds the body of one page of tags.
const maxTagPageSize = 16 << 20

// Tags lists the tags of the repository name (host/repository), following the registry's
// pagination. It asks the upstream (the last host that resolves), which has every tag where
// mirrors may not. NotFound when the repository does not exist.
func (r *Registry) Tags(ctx context.Context, name string) ([]string, error) {
	rr, err := parseRef(name)
	if err != nil {
		return nil, err
	}
	ctx = pullScope(ctx, rr)
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityResolve)
	if err != nil {
		return nil, fmt.Errorf("list the tags of %s: %w", name, err)
	}
	ep := eps[len(eps)-1]
	next := ep.url(rr.repo, "tags/list", url.Values{"n": {"1000"}})
	var tags []string
	for page := 0; next != nil && page < maxTagPages; page++ {
		u := next
		next = nil
		err := r.withRetry(ctx, ep.host.Host, "tags", func(ctx context.Context) error {
			req := &request{ep: ep, repo: rr.repo, method: http.MethodGet, u: u, op: "tags", header: http.Header{"Accept": {"application/json"}}}
			resp, err := r.send(ctx, req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return statusError(req, resp)
			}
			b, err := readLimited(resp.Body, maxTagPageSize)
			if err != nil {
				return truncatedOrTooLarge(fmt.Errorf("GET %s: %w", redactURL(u), err))
			}
			var body struct {
				Tags []string `json:"tags"`
			}
			if err := json.Unmarshal(b, &body); err != nil {
				return fmt.Errorf("GET %s: %w: %w", redactURL(u), errdefs.ErrUnknown, err)
			}
			tags = append(tags, body.Tags...)
			if l := nextLink(resp.Header.Get("Link")); l != "" {
				if next, err = resolveLocation(u, l); err != nil {
					return fmt.Errorf("GET %s: Link: %w", redactURL(u), err)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list the tags of %s: %w", name, err)
		}
	}
	return tags, nil
}
