package credentials

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/rillstream/rill/remote"
	"sigs.k8s.io/yaml"
)

// Versions of kubelet's credential provider config and plugin protocol rill speaks.
var (
	configAPIVersions   = []string{"kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1alpha1"}
	providerAPIVersions = []string{"credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v1beta1", "credentialprovider.kubelet.k8s.io/v1alpha1"}
)

// ProviderConfig is kubelet's CredentialProviderConfig (--image-credential-provider-config).
type ProviderConfig struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Providers  []Provider `json:"providers"`
}

// Provider is one exec plugin of a CredentialProviderConfig.
type Provider struct {
	// Name is the plugin's executable in the provider bin directory.
	Name string `json:"name"`
	// MatchImages are the images the plugin is asked about (globs in the host labels).
	MatchImages []string `json:"matchImages"`
	// DefaultCacheDuration is how long an answer is kept when it does not say ("12h").
	DefaultCacheDuration string `json:"defaultCacheDuration"`
	// APIVersion is the plugin protocol's version (credentialprovider.kubelet.k8s.io/v1).
	APIVersion string   `json:"apiVersion"`
	Args       []string `json:"args,omitempty"`
	Env        []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env,omitempty"`
	// TokenAttributes asks kubelet for the pod's service account token: rill has none to give.
	TokenAttributes json.RawMessage `json:"tokenAttributes,omitempty"`

	defaultCache time.Duration
}

// ParseProviderConfig reads a CredentialProviderConfig (YAML or JSON) and checks it as
// kubelet does; an error names the provider and field.
func ParseProviderConfig(data []byte) (*ProviderConfig, error) {
	var c ProviderConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	if c.Kind != "CredentialProviderConfig" {
		return nil, fmt.Errorf("credential provider config: kind %q, want CredentialProviderConfig", c.Kind)
	}
	if !slices.Contains(configAPIVersions, c.APIVersion) {
		return nil, fmt.Errorf("credential provider config: apiVersion %q is not one of %s", c.APIVersion, strings.Join(configAPIVersions, ", "))
	}
	if len(c.Providers) == 0 {
		return nil, errors.New("credential provider config: no providers")
	}
	seen := map[string]bool{}
	for i := range c.Providers {
		p := &c.Providers[i]
		switch {
		case p.Name == "" || p.Name == "." || p.Name == ".." || strings.ContainsAny(p.Name, `/\`):
			return nil, fmt.Errorf("credential provider config: providers[%d].name %q is not a file name", i, p.Name)
		case seen[p.Name]:
			return nil, fmt.Errorf("credential provider config: provider %s is listed twice", p.Name)
		case len(p.MatchImages) == 0:
			return nil, fmt.Errorf("credential provider config: provider %s: matchImages is empty", p.Name)
		case !slices.Contains(providerAPIVersions, p.APIVersion):
			return nil, fmt.Errorf("credential provider config: provider %s: apiVersion %q is not one of %s", p.Name, p.APIVersion, strings.Join(providerAPIVersions, ", "))
		}
		seen[p.Name] = true
		for _, m := range p.MatchImages {
			if _, ok := parseSchemeless(m); !ok {
				return nil, fmt.Errorf("credential provider config: provider %s: matchImages entry %q is not an image pattern", p.Name, m)
			}
		}
		d, err := time.ParseDuration(p.DefaultCacheDuration)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("credential provider config: provider %s: defaultCacheDuration %q is not a duration like \"12h\"", p.Name, p.DefaultCacheDuration)
		}
		p.defaultCache = d
	}
	return &c, nil
}

// providerRequest and providerResponse are the plugin protocol's messages.
type providerRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Image      string `json:"image"`
}

type providerResponse struct {
	APIVersion    string                  `json:"apiVersion"`
	Kind          string                  `json:"kind"`
	CacheKeyType  string                  `json:"cacheKeyType"`
	CacheDuration *string                 `json:"cacheDuration,omitempty"`
	Auth          map[string]providerAuth `json:"auth"`
}

type providerAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// Cache key types of the protocol.
const (
	cacheKeyImage    = "Image"
	cacheKeyRegistry = "Registry"
	cacheKeyGlobal   = "Global"
)

// ProviderTimeout bounds one run of a plugin.
const ProviderTimeout = time.Minute

// Providers is the source of kubelet's credential provider plugins: for an image, each
// provider whose matchImages match it is asked in the config's order (its answer cached as it
// says), and its auth entries matching the image are offered, the most specific first.
type Providers struct {
	providers []Provider
	binDir    string
	now       func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]cached
}

type cacheKey struct{ provider, key string }

type cached struct {
	auth    map[string]providerAuth
	expires time.Time
}

var (
	_ Source  = (*Providers)(nil)
	_ Refuser = (*Providers)(nil)
)

// NewProviders returns the source of cfg's plugins, found in binDir.
func NewProviders(cfg *ProviderConfig, binDir string) *Providers {
	return &Providers{providers: cfg.Providers, binDir: binDir, now: time.Now, cache: map[cacheKey]cached{}}
}

// LoadProviders reads the CredentialProviderConfig at path and checks that each plugin is an
// executable in binDir.
func LoadProviders(ctx context.Context, path, binDir string) (*Providers, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credential provider config: %w", err)
	}
	cfg, err := ParseProviderConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range cfg.Providers {
		fi, err := os.Stat(filepath.Join(binDir, p.Name))
		if err != nil {
			return nil, fmt.Errorf("credential provider %s: %w", p.Name, err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("credential provider %s: %s is not an executable", p.Name, filepath.Join(binDir, p.Name))
		}
		if len(p.TokenAttributes) > 0 {
			log.G(ctx).WithField("provider", p.Name).Warn("credential provider asks for service account tokens (tokenAttributes): rill has none, the plugin is asked without")
		}
	}
	return NewProviders(cfg, binDir), nil
}

// Name is the source's name in logs.
func (*Providers) Name() string { return "provider" }

// Lookup asks the matching plugins (or their cached answers) for the repository's credentials.
// A plugin that fails is skipped, with a warning: the next one, or the next source, is asked.
func (p *Providers) Lookup(ctx context.Context, s Scope) ([]Candidate, error) {
	image := s.String()
	var out []Candidate
	for i := range p.providers {
		pr := &p.providers[i]
		if !slices.ContainsFunc(pr.MatchImages, func(m string) bool { return matchImage(m, image) }) {
			continue
		}
		auth, err := p.auth(ctx, pr, s)
		if err != nil {
			log.G(ctx).WithError(err).WithFields(log.Fields{"provider": pr.Name, "scope": image}).Warn("credential provider failed")
			continue
		}
		keys := make([]string, 0, len(auth))
		for k := range auth {
			if matchImage(k, image) {
				keys = append(keys, k)
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(keys))) // kubelet's keyring: the most specific first
		for _, k := range keys {
			a := auth[k]
			out = append(out, Candidate{Credential: remote.Credential{Username: a.Username, Secret: a.Password}, Origin: "provider " + pr.Name})
		}
	}
	return out, nil
}

// auth returns the provider's answer for the scope, from the cache or a run of the plugin.
func (p *Providers) auth(ctx context.Context, pr *Provider, s Scope) (map[string]providerAuth, error) {
	now := p.now()
	p.mu.Lock()
	for _, key := range []string{cacheKeyImage + ":" + s.String(), cacheKeyRegistry + ":" + s.Host, cacheKeyGlobal + ":"} {
		if c, ok := p.cache[cacheKey{pr.Name, key}]; ok {
			if now.Before(c.expires) {
				p.mu.Unlock()
				return c.auth, nil
			}
			delete(p.cache, cacheKey{pr.Name, key})
		}
	}
	p.mu.Unlock()

	resp, err := p.exec(ctx, pr, s.String())
	if err != nil {
		return nil, err
	}
	d := pr.defaultCache
	if resp.CacheDuration != nil {
		if d, err = time.ParseDuration(*resp.CacheDuration); err != nil || d < 0 {
			return nil, fmt.Errorf("credential provider %s: cacheDuration %q is not a duration", pr.Name, *resp.CacheDuration)
		}
	}
	if d > 0 {
		var key string
		switch resp.CacheKeyType {
		case cacheKeyImage:
			key = cacheKeyImage + ":" + s.String()
		case cacheKeyRegistry:
			key = cacheKeyRegistry + ":" + s.Host
		case cacheKeyGlobal:
			key = cacheKeyGlobal + ":"
		}
		p.mu.Lock()
		p.cache[cacheKey{pr.Name, key}] = cached{auth: resp.Auth, expires: now.Add(d)}
		p.mu.Unlock()
	}
	return resp.Auth, nil
}

// exec runs the plugin with the request on stdin and reads its response from stdout. Neither
// its output nor its stderr goes into errors or logs: they may hold secrets.
func (p *Providers) exec(ctx context.Context, pr *Provider, image string) (*providerResponse, error) {
	req, err := json.Marshal(providerRequest{APIVersion: pr.APIVersion, Kind: "CredentialProviderRequest", Image: image})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, ProviderTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, pr.Name), pr.Args...)
	cmd.Env = os.Environ()
	for _, e := range pr.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	cmd.Stdin = bytes.NewReader(req)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("credential provider %s: %w", pr.Name, err)
	}
	return parseProviderResponse(stdout.Bytes(), pr)
}

// parseProviderResponse decodes and checks a plugin's answer.
func parseProviderResponse(data []byte, pr *Provider) (*providerResponse, error) {
	var resp providerResponse
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("credential provider %s: malformed response (not JSON of a CredentialProviderResponse)", pr.Name)
	}
	switch {
	case resp.Kind != "CredentialProviderResponse":
		return nil, fmt.Errorf("credential provider %s: response kind %q, want CredentialProviderResponse", pr.Name, resp.Kind)
	case resp.APIVersion != pr.APIVersion:
		return nil, fmt.Errorf("credential provider %s: response apiVersion %q, want %q as configured", pr.Name, resp.APIVersion, pr.APIVersion)
	case resp.CacheKeyType != cacheKeyImage && resp.CacheKeyType != cacheKeyRegistry && resp.CacheKeyType != cacheKeyGlobal:
		return nil, fmt.Errorf("credential provider %s: cacheKeyType %q is not Image, Registry or Global", pr.Name, resp.CacheKeyType)
	}
	for k := range resp.Auth {
		if _, ok := parseSchemeless(k); !ok {
			return nil, fmt.Errorf("credential provider %s: auth key %q is not an image pattern", pr.Name, k)
		}
	}
	return &resp, nil
}

// Refused drops cached answers that hold c, so that their plugins are asked again.
func (p *Providers) Refused(_ context.Context, _ Scope, c remote.Credential) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.cache {
		for _, a := range e.auth {
			if a.Username == c.Username && a.Password == c.Secret {
				delete(p.cache, k)
				break
			}
		}
	}
}
