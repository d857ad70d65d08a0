package credentials

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/rillstream/rill/remote"
)

// Candidate is a credential a source offers, with where it came from (for logs: never the
// secret).
type Candidate struct {
	Credential remote.Credential
	// Origin says where the credential came from ("cri pod default/web", "provider ecr").
	Origin string
}

// Source offers credentials for a scope, best first. An error means the source could not
// answer; the keychain then asks the next one.
type Source interface {
	// Name names the source in logs ("cri", "provider", "docker-config").
	Name() string
	Lookup(ctx context.Context, s Scope) ([]Candidate, error)
}

// Refuser is a Source that wants to hear that the registry refused one of its credentials (a
// cache of a credential provider drops it, so that the plugin is asked again).
type Refuser interface {
	Refused(ctx context.Context, s Scope, c remote.Credential)
}

// DefaultRefusalMemory is how long a refused credential is skipped: long enough that reads do
// not keep sending it, short enough that a registry's passing failure is forgotten.
const DefaultRefusalMemory = time.Minute

// Keychain asks its sources in order for the credentials of a repository and skips those the
// registry refused recently. It implements remote.Keychain.
type Keychain struct {
	sources []Source
	memory  time.Duration
	now     func() time.Time

	mu      sync.Mutex
	refused map[refusal]time.Time // when each refusal was heard
}

type refusal struct {
	scope Scope
	fp    [sha256.Size]byte // of the credential: the secret is not kept here
}

var _ remote.Keychain = (*Keychain)(nil)

// NewKeychain returns a keychain over sources, asked in order; nil sources are skipped.
func NewKeychain(sources ...Source) *Keychain {
	k := &Keychain{memory: DefaultRefusalMemory, now: time.Now, refused: map[refusal]time.Time{}}
	for _, s := range sources {
		if s != nil {
			k.sources = append(k.sources, s)
		}
	}
	return k
}

func fingerprint(c remote.Credential) [sha256.Size]byte {
	return sha256.Sum256([]byte(c.Username + "\x00" + c.Secret + "\x00" + c.RegistryToken))
}

// Credential returns the first credential of the first source that has one the registry has
// not refused lately; none: anonymous.
func (k *Keychain) Credential(ctx context.Context, host, repo string) (remote.Credential, error) {
	s := Scope{Host: NormalizeHost(host), Repository: repo}
	for _, src := range k.sources {
		cands, err := src.Lookup(ctx, s)
		if err != nil {
			log.G(ctx).WithError(err).WithFields(log.Fields{"source": src.Name(), "scope": s.String()}).Warn("credential source failed; asking the next")
			continue
		}
		for _, c := range cands {
			if c.Credential.IsZero() || k.isRefused(s, c.Credential) {
				continue
			}
			log.G(ctx).WithFields(log.Fields{"source": src.Name(), "origin": c.Origin, "scope": s.String()}).Debug("registry credentials found")
			return c.Credential, nil
		}
	}
	log.G(ctx).WithField("scope", s.String()).Debug("no registry credentials: anonymous")
	return remote.Credential{}, nil
}

// Refused remembers that the registry refused c for the repository, for a while, and tells
// the sources that want to know.
func (k *Keychain) Refused(ctx context.Context, host, repo string, c remote.Credential) {
	s := Scope{Host: NormalizeHost(host), Repository: repo}
	k.mu.Lock()
	now := k.now()
	for r, at := range k.refused {
		if now.Sub(at) > k.memory {
			delete(k.refused, r)
		}
	}
	k.refused[refusal{s, fingerprint(c)}] = now
	k.mu.Unlock()
	for _, src := range k.sources {
		if r, ok := src.(Refuser); ok {
			r.Refused(ctx, s, c)
		}
	}
}

func (k *Keychain) isRefused(s Scope, c remote.Credential) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.refused[refusal{s, fingerprint(c)}]
	return ok && k.now().Sub(at) <= k.memory
}

// DockerConfig is the source of a Docker config.json (path; empty: $DOCKER_CONFIG, else
// ~/.docker/config.json), read at every use.
func DockerConfig(path string) Source { return dockerConfig{remote.DockerConfig(path)} }

type dockerConfig struct{ c remote.Credentials }

func (dockerConfig) Name() string { return "docker-config" }

func (d dockerConfig) Lookup(ctx context.Context, s Scope) ([]Candidate, error) {
	u, secret, err := d.c.Credentials(ctx, s.Host)
	if err != nil || (u == "" && secret == "") {
		return nil, err
	}
	return []Candidate{{Credential: remote.Credential{Username: u, Secret: secret}, Origin: "docker config"}}, nil
}
