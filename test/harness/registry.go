package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Registry is a distribution registry ("registry serve") on a free loopback port, with its
// storage in a temporary directory and deletes enabled.
type Registry struct {
	proc *Process
	host string
}

const registryConfig = `version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`

// StartRegistry starts a registry on its own, with its storage, config and log under dir, for
// Options.Registry: it outlives the Envs that use it. Stop it with Stop.
func StartRegistry(ctx context.Context, dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the registry directory: %w", err)
	}
	return startRegistry(ctx, dir, dir)
}

// StartRegistryHtpasswd is StartRegistry with basic authentication against an htpasswd file
// (bcrypt entries), which the registry reads again whenever it changes.
func StartRegistryHtpasswd(ctx context.Context, dir, htpasswd string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the registry directory: %w", err)
	}
	return startRegistry(ctx, dir, dir, fmt.Sprintf("auth:\n  htpasswd:\n    realm: rill-test\n    path: %s\n", htpasswd))
}

// Stop stops the registry (SIGTERM, then SIGKILL after a grace period). Its exit status on
// SIGTERM is not ours to judge.
func (r *Registry) Stop(ctx context.Context) error {
	_ = r.proc.Stop(ctx, 10*time.Second)
	if !r.proc.Exited() {
		return fmt.Errorf("registry (pid %d) is still running", r.proc.PID())
	}
	return nil
}

// startRegistry starts the registry with its files under dir and its log in logDir;
// extra is YAML appended to the configuration (top-level sections the default has not).
func startRegistry(ctx context.Context, dir, logDir string, extra ...string) (*Registry, error) {
	bin, err := LookTool("registry")
	if err != nil {
		return nil, err
	}
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, fmt.Errorf("creating the registry storage: %w", err)
	}
	// The port is free when we ask; another process may take it before the registry binds it,
	// so try a few ports.
	var lastErr error
	for range 3 {
		host, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		config := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(config, append(fmt.Appendf(nil, registryConfig, storage, host), strings.Join(extra, "")...), 0o644); err != nil {
			return nil, fmt.Errorf("writing the registry config: %w", err)
		}
		env := append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
		proc, err := startProcess("registry", filepath.Join(logDir, "registry.log"), env, bin, "serve", config)
		if err != nil {
			return nil, err
		}
		r := &Registry{proc: proc, host: host}
		if lastErr = proc.waitReady(ctx, 30*time.Second, r.ping); lastErr == nil {
			return r, nil
		}
		_ = proc.Stop(ctx, 5*time.Second)
	}
	return nil, fmt.Errorf("starting the registry: %w", lastErr)
}

// Host returns the registry's "127.0.0.1:PORT".
func (r *Registry) Host() string { return r.host }

// Process returns the registry process.
func (r *Registry) Process() *Process { return r.proc }

func (r *Registry) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.host+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	// 401: a registry with authentication answers, without credentials, with its challenge.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// freeLoopbackAddr returns "127.0.0.1:PORT" for a port that is free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// NotifyEndpoint is a webhook the registry sends its event notifications to
// (notifications.endpoints in its configuration).
type NotifyEndpoint struct {
	Name string
	URL  string
	// Headers are sent with every notification (e.g. Authorization).
	Headers map[string]string
}

// StartRegistryNotifying is StartRegistry with the registry's push, pull and delete events
// sent to endpoints: each envelope is retried (every 500ms) until the endpoint accepts it, so
// an endpoint that is down for a while misses nothing the registry still holds in memory.
func StartRegistryNotifying(ctx context.Context, dir string, endpoints ...NotifyEndpoint) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the registry directory: %w", err)
	}
	var b strings.Builder
	b.WriteString("notifications:\n  endpoints:\n")
	for _, e := range endpoints {
		fmt.Fprintf(&b, "    - name: %q\n      url: %q\n      timeout: 5s\n      threshold: 3\n      backoff: 500ms\n", e.Name, e.URL)
		if len(e.Headers) > 0 {
			b.WriteString("      headers:\n")
			for k, v := range e.Headers {
				fmt.Fprintf(&b, "        %q: [%q]\n", k, v)
			}
		}
	}
	return startRegistry(ctx, dir, dir, b.String())
}
