package remote

import (
	"context"
	"fmt"
	"net/http"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
)

// DeleteManifest deletes the manifest that ref names (by digest, or its tag) from the
// upstream registry of its repository: the last host that can push, after the mirrors.
// NotFound when it is not there; NotImplemented when the registry does not allow the delete
// (distribution answers 405 when deletes are disabled, 400 UNSUPPORTED for tag deletes).
func (r *Registry) DeleteManifest(ctx context.Context, ref string) error {
	rr, err := parseRef(ref)
	if err != nil {
		return err
	}
	ctx = docker.WithScope(ctx, "repository:"+rr.repo+":pull,push,delete")
	eps, err := r.endpoints(ctx, rr.host, docker.HostCapabilityPush)
	if err != nil {
		return fmt.Errorf("delete %s: %w", rr, err)
	}
	ep := eps[len(eps)-1]
	u := ep.url(rr.repo, "manifests/"+rr.object(), nil)
	return r.withRetry(ctx, ep.host.Host, "manifest_delete", func(ctx context.Context) error {
		req := &request{ep: ep, repo: rr.repo, method: http.MethodDelete, u: u, op: "manifest_delete"}
		resp, err := r.send(ctx, req)
		if err != nil {
			return err
		}
		switch resp.StatusCode {
		case http.StatusAccepted, http.StatusOK, http.StatusNoContent:
			drain(resp)
			return nil
		case http.StatusMethodNotAllowed, http.StatusBadRequest:
			base := fmt.Errorf("%s %s: %s%s", req.method, redactURL(u), resp.Status, registryMessage(resp))
			drain(resp)
			return fmt.Errorf("%w (the registry does not allow this delete): %w", base, errdefs.ErrNotImplemented)
		}
		return statusError(req, resp)
	})
}
