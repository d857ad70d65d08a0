package remote

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
)

// endpoint is one place a repository's content can be fetched from: a mirror or the
// upstream registry, as configured in hosts.toml.
type endpoint struct {
	host   docker.RegistryHost
	ns     string // the upstream registry host, sent as ?ns= to mirrors
	mirror bool
	// newAuth makes the authorizer of one repository on this endpoint.
	newAuth func(repo string) *authState

	mu    sync.Mutex
	auths map[string]*authState // by repository
}

// authFor returns the authorizer of repo on e: credentials are per repository.
func (e *endpoint) authFor(repo string) *authState {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.auths[repo]
	if !ok {
		a = e.newAuth(repo)
		e.auths[repo] = a
	}
	return a
}

// hostState is what is remembered per network host, across repositories and blobs.
type hostState struct {
	sched        *scheduler
	noMultiRange atomic.Bool
}

// hostsCache holds the endpoints of each registry namespace, loaded from hosts.toml and
// loaded again when the files change.
type hostsCache struct {
	mu    sync.Mutex
	hosts map[string]*hostsEntry
	state map[string]*hostState
}

type hostsEntry struct {
	eps     []*endpoint
	fp      string    // fingerprint of the host directory the endpoints were loaded from
	checked time.Time // when fp was last compared with the files
}

// endpoints returns the endpoints for the registry host ns, mirrors first, in order, then
// the upstream, filtered by capability. The host directory is checked for changes at most
// every few seconds; unchanged, the endpoints (and their tokens) are kept.
func (r *Registry) endpoints(ctx context.Context, ns string, want docker.HostCapabilities) ([]*endpoint, error) {
	r.hosts.mu.Lock()
	e, ok := r.hosts.hosts[ns]
	if ok && time.Since(e.checked) >= r.opts.hostsRecheck {
		if fp := r.hostsFingerprint(ns); fp != e.fp {
			ok = false
		} else {
			e.checked = time.Now()
		}
	}
	r.hosts.mu.Unlock()
	if !ok {
		fp := r.hostsFingerprint(ns)
		eps, err := r.loadEndpoints(ctx, ns)
		if err != nil {
			return nil, err
		}
		e = &hostsEntry{eps: eps, fp: fp, checked: time.Now()}
		r.hosts.mu.Lock()
		r.hosts.hosts[ns] = e
		r.hosts.mu.Unlock()
	}
	eps := e.eps
	var out []*endpoint
	for _, e := range eps {
		if e.host.Capabilities.Has(want) {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no configured host for %s can %s: %w", ns, capabilityName(want), errNoHost)
	}
	return out, nil
}

func capabilityName(c docker.HostCapabilities) string {
	switch c {
	case docker.HostCapabilityPull:
		return "pull"
	case docker.HostCapabilityResolve:
		return "resolve"
	case docker.HostCapabilityPush:
		return "push"
	case docker.HostCapabilityReferrers:
		return "list referrers"
	}
	return "serve"
}

func (r *Registry) loadEndpoints(ctx context.Context, ns string) ([]*endpoint, error) {
	hostOpts := config.HostOptions{
		DefaultScheme: r.opts.defaultScheme,
		// Keep a connection per allowed concurrent request (on-demand and bulk slots), not
		// net/http's default of 2: a burst of range requests should not pay for new
		// connections.
		UpdateClient: func(c *http.Client) error {
			if tr, ok := c.Transport.(*http.Transport); ok {
				slots := r.opts.maxConcurrency + r.opts.bulkConcurrency
				tr.MaxIdleConnsPerHost = slots
				tr.MaxIdleConns = max(tr.MaxIdleConns, 4*slots)
			}
			return nil
		},
	}
	if r.opts.hostsDir != "" {
		hostOpts.HostDir = config.HostDirFromRoot(r.opts.hostsDir)
	}
	rhosts, err := config.ConfigureHosts(ctx, hostOpts)(ns)
	if err != nil {
		return nil, fmt.Errorf("configure hosts for %s from %s: %w", ns, r.opts.hostsDir, err)
	}
	eps := make([]*endpoint, 0, len(rhosts))
	for _, h := range rhosts {
		h := h
		mirror := h.Host != ns && !(ns == "docker.io" && h.Host == "registry-1.docker.io")
		mk := func(c Credential) docker.Authorizer {
			opts := []docker.AuthorizerOpt{
				docker.WithAuthClient(h.Client),
				docker.WithAuthCreds(func(string) (string, string, error) { return c.Username, c.Secret, nil }),
			}
			if len(h.Header) > 0 {
				opts = append(opts, docker.WithAuthHeader(h.Header))
			}
			return docker.NewDockerAuthorizer(opts...)
		}
		newAuth := func(repo string) *authState {
			return &authState{host: h.Host, repo: repo, keychain: r.opts.keychain, timeout: r.opts.credentialsTimeout, mk: mk}
		}
		eps = append(eps, &endpoint{host: h, ns: ns, mirror: mirror, newAuth: newAuth, auths: map[string]*authState{}})
	}
	return eps, nil
}

// hostsFingerprint describes the files containerd's host directory lookup would read for ns
// (names, sizes, modification times), so that an edit is noticed.
func (r *Registry) hostsFingerprint(ns string) string {
	if r.opts.hostsDir == "" {
		return ""
	}
	dirs := []string{filepath.Join(r.opts.hostsDir, ns), filepath.Join(r.opts.hostsDir, "_default")}
	if i := strings.LastIndex(ns, ":"); i > 0 {
		dirs = append([]string{filepath.Join(r.opts.hostsDir, ns[:i]+"_"+ns[i+1:]+"_")}, dirs...)
	}
	var b strings.Builder
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			fmt.Fprintf(&b, "%s:-;", d)
			continue
		}
		for _, en := range entries {
			if info, err := en.Info(); err == nil {
				fmt.Fprintf(&b, "%s/%s:%d:%d;", d, en.Name(), info.Size(), info.ModTime().UnixNano())
			}
		}
	}
	return b.String()
}

// state returns what is remembered of a network host (host[:port]).
func (r *Registry) state(host string) *hostState {
	r.hosts.mu.Lock()
	defer r.hosts.mu.Unlock()
	s, ok := r.hosts.state[host]
	if !ok {
		s = &hostState{sched: newScheduler(host, r.opts.maxConcurrency, r.opts.bulkConcurrency, r.metrics)}
		r.hosts.state[host] = s
	}
	return s
}

// url builds the URL of path (below /v2/<repo>/) on e.
func (e *endpoint) url(repo, path string, query url.Values) *url.URL {
	u := &url.URL{
		Scheme: e.host.Scheme,
		Host:   e.host.Host,
		Path:   strings.TrimSuffix(e.host.Path, "/") + "/" + repo + "/" + path,
	}
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	if e.mirror {
		q.Set("ns", e.ns)
	}
	u.RawQuery = q.Encode()
	return u
}
