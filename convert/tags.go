package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// maxTagPages bounds the pages of one tag listing (a registry that links pages in a circle
// must not keep us forever).
const maxTagPages = 1000

// Tags lists the tags of the repository name (host/repository), following the registry's
// pagination. remote has no tag listing: like deletes, it is sent with the Access given to
// New. NotFound when the repository does not exist.
func (c *Converter) Tags(ctx context.Context, name string) (_ []string, err error) {
	defer func() { err = authError(err) }()
	// The upstream (the last host that resolves) has every tag; mirrors may not.
	rh, repo, err := c.del.access.host(ctx, name, docker.HostCapabilityResolve)
	if err != nil {
		return nil, fmt.Errorf("list the tags of %s: %w", name, err)
	}
	ctx = docker.WithScope(ctx, "repository:"+repo+":pull")
	base := url.URL{Scheme: rh.Scheme, Host: rh.Host}
	next := strings.TrimSuffix(rh.Path, "/") + "/" + repo + "/tags/list?n=1000"
	var tags []string
	for page := 0; next != "" && page < maxTagPages; page++ {
		u, err := base.Parse(next)
		if err != nil {
			return nil, fmt.Errorf("list the tags of %s: next page %q: %w", name, next, err)
		}
		var body struct {
			Tags []string `json:"tags"`
		}
		link, err := getJSON(ctx, rh, u.String(), &body)
		if err != nil {
			return nil, fmt.Errorf("list the tags of %s: %w", name, err)
		}
		tags = append(tags, body.Tags...)
		next = nextLink(link)
	}
	return tags, nil
}

// getJSON GETs u from rh into v, authorizing and retrying once after a challenge, and
// returns the response's Link header.
func getJSON(ctx context.Context, rh *docker.RegistryHost, u string, v any) (string, error) {
	for try := 0; ; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", err
		}
		for k, v := range rh.Header {
			req.Header[k] = v
		}
		req.Header.Set("Accept", "application/json")
		if rh.Authorizer != nil {
			if err := rh.Authorizer.Authorize(ctx, req); err != nil {
				return "", fmt.Errorf("authorize: %w", err)
			}
		}
		resp, err := rh.Client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return "", fmt.Errorf("GET %s: %w: %w", req.URL.Path, err, errdefs.ErrUnavailable)
		}
		if resp.StatusCode == http.StatusUnauthorized && try == 0 && rh.Authorizer != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if err := rh.Authorizer.AddResponses(ctx, []*http.Response{resp}); err == nil {
				continue
			}
		}
		defer resp.Body.Close()
		base := fmt.Sprintf("GET %s: %s", req.URL.Path, resp.Status)
		switch code := resp.StatusCode; {
		case code == http.StatusOK:
			if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
				return "", fmt.Errorf("%s: %w", base, err)
			}
			return resp.Header.Get("Link"), nil
		case code == http.StatusNotFound:
			return "", fmt.Errorf("%s: %w", base, errdefs.ErrNotFound)
		case code == http.StatusUnauthorized:
			return "", fmt.Errorf("%s: %w", base, errdefs.ErrUnauthenticated)
		case code == http.StatusForbidden:
			return "", fmt.Errorf("%s: %w", base, errdefs.ErrPermissionDenied)
		case code == http.StatusTooManyRequests || code >= 500:
			return "", fmt.Errorf("%s: %w", base, errdefs.ErrUnavailable)
		default:
			return "", fmt.Errorf("%s: %w", base, errdefs.ErrUnknown)
		}
	}
}

// nextLink returns the target of a Link header's rel="next" ("" for none).
func nextLink(h string) string {
	for _, part := range strings.Split(h, ",") {
		target, params, ok := strings.Cut(part, ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		return strings.Trim(strings.TrimSpace(target), "<>")
	}
	return ""
}
