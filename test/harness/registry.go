package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
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

// startRegistry starts the registry with its files under dir and its log in logDir.
func startRegistry(ctx context.Context, dir, logDir string) (*Registry, error) {
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
		if err := os.WriteFile(config, fmt.Appendf(nil, registryConfig, storage, host), 0o644); err != nil {
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
	if resp.StatusCode != http.StatusOK {
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
