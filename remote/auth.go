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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/log"
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

// Credential is what a [Keychain] gives for one repository of a registry. The zero value
// means none: the registry is used anonymously.
type Credential struct {
	// Username and Secret are a user name and password; with an empty Username, Secret is an
	// identity (refresh) token.
	Username string
	Secret   string
	// RegistryToken is a bearer token for the registry itself, sent as it is.
	RegistryToken string
}

// IsZero reports whether c holds no credential.
func (c Credential) IsZero() bool { return c == Credential{} }

// Keychain is a source of credentials per repository that learns which ones the registry
// refused. host is the network host requests go to ("registry.example.com:5000",
// "registry-1.docker.io"), repository the path of the repository on it ("team/app").
// Implementations must not log secrets.
type Keychain interface {
	// Credential returns the credential for repository on host; the zero Credential with a
	// nil error means anonymous.
	Credential(ctx context.Context, host, repository string) (Credential, error)
	// Refused tells the keychain that the registry answered 401 or 403 to a request that
	// carried c (or its token service refused c): the next Credential call should give
	// another one, if the keychain has one.
	Refused(ctx context.Context, host, repository string, c Credential)
}

// credentialsKeychain is the Keychain of a host-wide Credentials source; it ignores refusals
// (the source is read again at every use).
type credentialsKeychain struct{ c Credentials }

func (k credentialsKeychain) Credential(ctx context.Context, host, _ string) (Credential, error) {
	u, s, err := k.c.Credentials(ctx, host)
	return Credential{Username: u, Secret: s}, err
}

func (credentialsKeychain) Refused(context.Context, string, string, Credential) {}

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

// maxAuthTries bounds the requests of one logical request that authentication may take: the
// anonymous one the registry challenges, and a retry with each further credential.
const maxAuthTries = 4

// authState is the authorizer of one repository on one endpoint. Requests go without
// Authorization until the registry challenges one; the keychain is then asked for the
// repository's credential. A 401 to a request that carried a token the authorizer fetched
// (expired, revoked) makes a new authorizer with the same credential; a 401 or 403 to a request
// that carried the credential itself (basic auth, a registry token), a 403 to a token, or a token
// service that refuses the credential tells the keychain it was refused, and the next challenge
// asks it for another.
type authState struct {
	host, repo string
	keychain   Keychain
	timeout    time.Duration
	// mk makes the token-flow authorizer (containerd's docker authorizer) for a credential.
	mk func(Credential) docker.Authorizer

	mu   sync.Mutex
	a    docker.Authorizer // nil: anonymous until challenged
	cred Credential        // what a was made with
	gen  uint64
}

func (s *authState) current() (docker.Authorizer, Credential, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.a, s.cred, s.gen
}

// reset drops the authorizer made at generation gen; with refused, the keychain is told that
// its credential was refused. It returns the generation now current.
func (s *authState) reset(ctx context.Context, gen uint64, refused bool) uint64 {
	s.mu.Lock()
	cred, mine := s.cred, s.gen == gen
	if mine {
		s.a, s.cred = nil, Credential{}
		s.gen++
	}
	now := s.gen
	s.mu.Unlock()
	if mine && refused && !cred.IsZero() {
		s.keychain.Refused(ctx, s.host, s.repo, cred)
	}
	return now
}

// authorize sets the Authorization header of req once the registry has asked for it. A token
// service that refuses the credential makes the request go anonymously: the registry's challenge
// then brings the keychain's next credential. refused is that credential, or nil.
func (s *authState) authorize(ctx context.Context, req *http.Request) (gen uint64, refused *Credential, err error) {
	a, cred, gen := s.current()
	if a == nil {
		return gen, nil, nil
	}
	err = a.Authorize(ctx, req)
	if err == nil {
		return gen, nil, nil
	}
	if se, ok := errors.AsType[remoteerrors.ErrUnexpectedStatus](err); ok && (se.StatusCode == http.StatusUnauthorized || se.StatusCode == http.StatusForbidden) {
		log.G(ctx).WithFields(log.Fields{"host": s.host, "repository": s.repo, "status": se.StatusCode}).Info("token service refused the credentials; asking the next source")
		req.Header.Del("Authorization")
		return s.reset(ctx, gen, true), &cred, nil
	}
	return gen, nil, fmt.Errorf("authorize %s: %w", req.URL.Host, err)
}

// challenged handles a 401, or a 403 to a request that carried Authorization (sent), answered
// at generation gen. It reports whether the request should be sent again; refused collects the
// credentials refused during this logical request, so that none is tried twice.
func (s *authState) challenged(ctx context.Context, gen uint64, sent string, resp *http.Response, refused *[]Credential) (bool, error) {
	if sent == "" {
		// Challenged without credentials: ask the keychain again, which may have some by now
		// (an authorizer made with none would never send any).
		s.reset(ctx, gen, false)
	} else {
		_, cred, _ := s.current()
		// A token the authorizer fetched may just have expired; the credential itself was
		// refused when it was sent as it is, or when the registry forbids what a token allows.
		credRefused := strings.HasPrefix(sent, "Basic ") || cred.RegistryToken != "" || resp.StatusCode == http.StatusForbidden
		if credRefused {
			*refused = append(*refused, cred)
			log.G(ctx).WithFields(log.Fields{"host": s.host, "repository": s.repo, "status": resp.StatusCode}).Info("registry refused the credentials; asking the next source")
		}
		s.reset(ctx, gen, credRefused)
	}
	if resp.StatusCode == http.StatusForbidden {
		// No challenge to answer: the request goes again without Authorization, and the
		// registry's challenge to it brings the next credential.
		return sent != "", nil
	}
	a, _, g := s.current()
	if a == nil {
		lctx, cancel := context.WithTimeout(ctx, s.timeout)
		c, err := s.keychain.Credential(lctx, s.host, s.repo)
		cancel()
		if err != nil {
			return false, fmt.Errorf("credentials for %s/%s: %w", s.host, s.repo, err)
		}
		if slices.Contains(*refused, c) && !c.IsZero() {
			return false, nil // nothing new to try
		}
		var na docker.Authorizer
		if c.RegistryToken != "" {
			na = registryToken(c.RegistryToken)
		} else {
			na = s.mk(c)
		}
		s.mu.Lock()
		if s.gen == g && s.a == nil {
			s.a, s.cred = na, c
		}
		a = s.a
		s.mu.Unlock()
		if a == nil {
			return true, nil // reset meanwhile by another request: try again
		}
	}
	if err := a.AddResponses(ctx, []*http.Response{resp}); err != nil {
		return false, fmt.Errorf("authenticate to %s: %w", resp.Request.URL.Host, err)
	}
	return true, nil
}

// registryToken authorizes every request with a bearer token given by the keychain (CRI's
// registry_token): no token flow.
type registryToken string

func (t registryToken) Authorize(_ context.Context, req *http.Request) error {
	req.Header.Set("Authorization", "Bearer "+string(t))
	return nil
}

func (registryToken) AddResponses(context.Context, []*http.Response) error { return nil }
