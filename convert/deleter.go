package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/rillstream/rill/remote"
)

// Access is how registries are reached, as the remote.Registry given to New was configured.
// remote has no delete: deleter uses these for the DELETE requests it makes itself.
type Access struct {
	// HostsDir is containerd's certs.d directory ("" for none).
	HostsDir string
	// Credentials is the credentials source (nil: anonymous).
	Credentials remote.Credentials
	// DefaultScheme is the scheme of hosts without configuration ("" for containerd's
	// default: https, or http for localhost).
	DefaultScheme string
}

// deleter sends manifest deletes to the upstream registry of a repository.
type deleter struct {
	access Access
}

func newDeleter(a Access) *deleter {
	if a.Credentials == nil {
		a.Credentials = remote.Anonymous()
	}
	return &deleter{access: a}
}

// deleteManifest deletes the manifest object (a digest or a tag) from the repository name
// (host/repository). NotFound when it is not there; NotImplemented when the registry does not
// allow deletes.
func (d *deleter) deleteManifest(ctx context.Context, name, object string) error {
	rh, repo, err := d.access.host(ctx, name, docker.HostCapabilityPush)
	if err != nil {
		return fmt.Errorf("delete %s@%s: %w", name, object, err)
	}
	ctx = docker.WithScope(ctx, "repository:"+repo+":pull,push,delete")
	u := url.URL{Scheme: rh.Scheme, Host: rh.Host, Path: strings.TrimSuffix(rh.Path, "/") + "/" + repo + "/manifests/" + object}
	for try := 0; ; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
		if err != nil {
			return err
		}
		for k, v := range rh.Header {
			req.Header[k] = v
		}
		if rh.Authorizer != nil {
			if err := rh.Authorizer.Authorize(ctx, req); err != nil {
				return fmt.Errorf("DELETE %s: authorize: %w", u.Path, err)
			}
		}
		resp, err := rh.Client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return fmt.Errorf("DELETE %s: %w", u.Path, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && try == 0 && rh.Authorizer != nil {
			if err := rh.Authorizer.AddResponses(ctx, []*http.Response{resp}); err == nil {
				continue
			}
		}
		base := fmt.Sprintf("DELETE %s: %s", u.Path, resp.Status)
		switch code := resp.StatusCode; {
		case code == http.StatusAccepted || code == http.StatusOK || code == http.StatusNoContent:
			return nil
		case code == http.StatusNotFound:
			return fmt.Errorf("%s: %w", base, errdefs.ErrNotFound)
		case code == http.StatusMethodNotAllowed || code == http.StatusBadRequest:
			// distribution answers 405 when deletes are disabled, 400 (UNSUPPORTED) for
			// tag deletes where it does not support them.
			return fmt.Errorf("%s (the registry does not allow this delete): %w", base, errdefs.ErrNotImplemented)
		case code == http.StatusUnauthorized:
			return fmt.Errorf("%s: %w", base, errdefs.ErrUnauthenticated)
		case code == http.StatusForbidden:
			return fmt.Errorf("%s: %w", base, errdefs.ErrPermissionDenied)
		default:
			return fmt.Errorf("%s: %w", base, errdefs.ErrUnknown)
		}
	}
}

// host returns the host of the repository name (host/repository) that has capability — the
// last one configured: the upstream, after the mirrors — and the repository's path, with the
// hosts, TLS and credentials of a.
func (a Access) host(ctx context.Context, name string, capability docker.HostCapabilities) (*docker.RegistryHost, string, error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	host, repo := reference.Domain(named), reference.Path(named)
	creds := a.Credentials
	if creds == nil {
		creds = remote.Anonymous()
	}
	opts := config.HostOptions{
		DefaultScheme: a.DefaultScheme,
		Credentials: func(h string) (string, string, error) {
			return creds.Credentials(ctx, h)
		},
	}
	if a.HostsDir != "" {
		opts.HostDir = config.HostDirFromRoot(a.HostsDir)
	}
	hosts, err := config.ConfigureHosts(ctx, opts)(host)
	if err != nil {
		return nil, "", fmt.Errorf("configure hosts: %w", err)
	}
	var rh *docker.RegistryHost
	for i := range hosts {
		if hosts[i].Capabilities.Has(capability) {
			rh = &hosts[i]
		}
	}
	if rh == nil {
		return nil, "", fmt.Errorf("no configured host of %s can do this: %w", host, errdefs.ErrFailedPrecondition)
	}
	return rh, repo, nil
}
