package remote

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

// Credentials is a source of registry credentials. host is the registry host as requests
// address it ("registry.example.com:5000", "registry-1.docker.io"). An empty username and
// secret with a nil error means "none here": the next source is asked, and with none left
// the registry is used anonymously. An empty username with a secret is an identity (refresh)
// token. Implementations must not log the secret.
type Credentials interface {
	Credentials(ctx context.Context, host string) (username, secret string, err error)
}

// CredentialsFunc adapts a function to [Credentials].
type CredentialsFunc func(ctx context.Context, host string) (username, secret string, err error)

// Credentials calls f.
func (f CredentialsFunc) Credentials(ctx context.Context, host string) (string, string, error) {
	return f(ctx, host)
}

// ChainCredentials asks each source in turn and returns the first credentials found.
func ChainCredentials(sources ...Credentials) Credentials {
	return CredentialsFunc(func(ctx context.Context, host string) (string, string, error) {
		for _, s := range sources {
			if s == nil {
				continue
			}
			u, p, err := s.Credentials(ctx, host)
			if err != nil {
				return "", "", err
			}
			if u != "" || p != "" {
				return u, p, nil
			}
		}
		return "", "", nil
	})
}

// Anonymous returns a source without credentials: registries are used anonymously.
func Anonymous() Credentials {
	return CredentialsFunc(func(context.Context, string) (string, string, error) { return "", "", nil })
}

// DockerConfig reads credentials from a Docker config.json at every use, so rotated
// credentials are picked up: path, or when empty $DOCKER_CONFIG/config.json, else
// ~/.docker/config.json. It honours credHelpers, credsStore (through the
// docker-credential-<name> helper protocol) and auths entries, in Docker's order. A missing
// file means no credentials.
func DockerConfig(path string) Credentials {
	return CredentialsFunc(func(ctx context.Context, host string) (string, string, error) {
		p := path
		if p == "" {
			p = defaultDockerConfigPath()
		}
		return dockerConfigCredentials(ctx, p, host)
	})
}

func defaultDockerConfigPath() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "config.json")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".docker", "config.json")
}

type dockerConfigFile struct {
	Auths       map[string]dockerAuthEntry `json:"auths"`
	CredHelpers map[string]string          `json:"credHelpers"`
	CredsStore  string                     `json:"credsStore"`
}

type dockerAuthEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// dockerHubKey is the key Docker uses for Docker Hub in config.json and helpers.
const dockerHubKey = "https://index.docker.io/v1/"

// configKeyHost normalises a config.json key or request host to a bare host for matching.
func configKeyHost(k string) string {
	k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
	if i := strings.IndexByte(k, '/'); i >= 0 {
		k = k[:i]
	}
	switch k {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return "index.docker.io"
	}
	return k
}

func dockerConfigCredentials(ctx context.Context, path, host string) (string, string, error) {
	if path == "" {
		return "", "", nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("read docker config %s: %w", path, err)
	}
	var cf dockerConfigFile
	if err := json.Unmarshal(b, &cf); err != nil {
		// The error text of encoding/json never quotes values, so no secret leaks here.
		return "", "", fmt.Errorf("parse docker config %s: %w", path, err)
	}
	want := configKeyHost(host)
	serverURL := host
	if want == "index.docker.io" {
		serverURL = dockerHubKey
	}
	for k, helper := range cf.CredHelpers {
		if configKeyHost(k) == want && helper != "" {
			return credentialHelper(ctx, helper, serverURL)
		}
	}
	if cf.CredsStore != "" {
		return credentialHelper(ctx, cf.CredsStore, serverURL)
	}
	for k, e := range cf.Auths {
		if configKeyHost(k) != want {
			continue
		}
		if e.IdentityToken != "" {
			return "", e.IdentityToken, nil
		}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return "", "", fmt.Errorf("docker config %s: auth entry for %s is not base64", path, k)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return "", "", fmt.Errorf("docker config %s: auth entry for %s is not user:password", path, k)
			}
			return u, p, nil
		}
		return e.Username, e.Password, nil
	}
	return "", "", nil
}

// credentialHelper runs docker-credential-<name> get, Docker's helper protocol.
func credentialHelper(ctx context.Context, name, serverURL string) (string, string, error) {
	cmd := exec.CommandContext(ctx, "docker-credential-"+name, "get")
	cmd.Stdin = strings.NewReader(serverURL)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(out.String(), "credentials not found") {
			return "", "", nil
		}
		// Neither stdout nor stderr is quoted: a broken helper might print secrets.
		return "", "", fmt.Errorf("credential helper docker-credential-%s for %s: %w", name, serverURL, err)
	}
	var resp struct {
		Username string `json:"Username"`
		Secret   string `json:"Secret"`
	}
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return "", "", fmt.Errorf("credential helper docker-credential-%s for %s: malformed answer", name, serverURL)
	}
	if resp.Username == "<token>" {
		return "", resp.Secret, nil
	}
	return resp.Username, resp.Secret, nil
}

// authState is the authorizer of one endpoint. A 401 on a request that carried credentials
// replaces it, so that cached tokens (which the registry no longer accepts) are forgotten and
// credentials are read again.
type authState struct {
	mu  sync.Mutex
	a   docker.Authorizer
	gen uint64
	mk  func() docker.Authorizer
}

func newAuthState(mk func() docker.Authorizer) *authState {
	return &authState{a: mk(), mk: mk}
}

func (s *authState) current() (docker.Authorizer, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.a, s.gen
}

// authorize sets the Authorization header of req, if the endpoint has asked for it.
func (s *authState) authorize(ctx context.Context, req *http.Request) (uint64, error) {
	a, gen := s.current()
	if err := a.Authorize(ctx, req); err != nil {
		return gen, fmt.Errorf("authorize %s: %w", req.URL.Host, err)
	}
	return gen, nil
}

// challenged handles a 401 answered to a request authorized at generation gen.
func (s *authState) challenged(ctx context.Context, gen uint64, hadAuth bool, resp *http.Response) error {
	s.mu.Lock()
	if hadAuth && s.gen == gen {
		s.a = s.mk()
		s.gen++
	}
	a := s.a
	s.mu.Unlock()
	if err := a.AddResponses(ctx, []*http.Response{resp}); err != nil {
		return fmt.Errorf("authenticate to %s: %w", resp.Request.URL.Host, err)
	}
	return nil
}
