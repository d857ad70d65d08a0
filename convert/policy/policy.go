package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/remote"
)

const (
	// ArtifactType is the artifactType of policy manifests.
	ArtifactType = "application/vnd.rill.policy.v1"
	// DefaultRepository is the repository, on each registry, that holds the policies of that
	// registry's repositories.
	DefaultRepository = "rill/policy"

	// AnnotationRepository names the repository (host/path) a policy is for.
	AnnotationRepository = "dev.rill.policy.v1.repository"
	// AnnotationEnabled is "true" when new pushes get streaming artifacts automatically.
	AnnotationEnabled = "dev.rill.policy.v1.enabled"
	// AnnotationUpdatedBy says who wrote the policy (user@host).
	AnnotationUpdatedBy = "dev.rill.policy.v1.updated-by"
	// AnnotationUpdated is when the policy was written (RFC 3339, UTC).
	AnnotationUpdated = ocispec.AnnotationCreated

	tagPrefix = "repo-"
)

// Policy is the automatic-creation policy of one repository.
type Policy struct {
	// Repository is the repository's full name (host/path).
	Repository string `json:"repository"`
	// Enabled says that new pushes get streaming artifacts automatically.
	Enabled bool `json:"enabled"`
	// Updated and UpdatedBy say when and by whom the policy was last written; zero when it
	// never was (the repository is then disabled).
	Updated   time.Time `json:"updated,omitzero"`
	UpdatedBy string    `json:"updatedBy,omitempty"`
	// Digest is the policy manifest's digest ("" when there is none).
	Digest digest.Digest `json:"digest,omitempty"`
}

// TagLister lists the tags of a repository (host/path); *convert.Converter is one.
type TagLister interface {
	Tags(ctx context.Context, name string) ([]string, error)
}

// Store reads and writes policies. It keeps no state of its own: every call asks the
// registry, so every Store over the same registry agrees.
type Store struct {
	reg  *remote.Registry
	tags TagLister
	repo string
	now  func() time.Time
	by   string
}

// Option changes one setting of a Store.
type Option func(*Store)

// WithRepository sets the policy repository (a path on each registry, default
// DefaultRepository).
func WithRepository(path string) Option { return func(s *Store) { s.repo = path } }

// WithClock sets the clock that dates policies (for tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithActor sets who writes the policies (default user@hostname).
func WithActor(by string) Option { return func(s *Store) { s.by = by } }

// New returns a Store that reaches registries through reg and lists tags with tags.
func New(reg *remote.Registry, tags TagLister, opts ...Option) (*Store, error) {
	s := &Store{reg: reg, tags: tags, repo: DefaultRepository, now: time.Now, by: actor()}
	for _, o := range opts {
		o(s)
	}
	if reg == nil || tags == nil {
		return nil, fmt.Errorf("policy: a registry and a tag lister are required: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := reference.ParseNamed("example.com/" + s.repo); err != nil || strings.ContainsAny(s.repo, ":@") {
		return nil, fmt.Errorf("policy repository %q is not a repository path: %w", s.repo, errdefs.ErrInvalidArgument)
	}
	return s, nil
}

func actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// Repository returns the policy repository's path.
func (s *Store) Repository() string { return s.repo }

// IsPolicyRepository reports whether path (a repository path, without the host) is the
// policy repository: pushes to it are never images.
func (s *Store) IsPolicyRepository(path string) bool { return path == s.repo }

// ParseRepository parses a repository name as Docker does ("team/app" is
// docker.io/team/app) and returns host/path; tags and digests are refused.
func ParseRepository(name string) (string, error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return "", fmt.Errorf("%q is not a repository name (want [HOST[:PORT]/]REPOSITORY): %w: %w", name, errdefs.ErrInvalidArgument, err)
	}
	if _, ok := named.(reference.Tagged); ok {
		return "", fmt.Errorf("%q names a tag; a policy is for a whole repository: %w", name, errdefs.ErrInvalidArgument)
	}
	if _, ok := named.(reference.Digested); ok {
		return "", fmt.Errorf("%q names a digest; a policy is for a whole repository: %w", name, errdefs.ErrInvalidArgument)
	}
	return named.Name(), nil
}

// Tag returns the tag of the policy of the repository path (without the host).
func Tag(path string) string {
	sum := sha256.Sum256([]byte(path))
	return tagPrefix + hex.EncodeToString(sum[:])[:40]
}

// ref returns the reference of repository's policy manifest, and the policy repository.
func (s *Store) ref(repository string) (ref, repo string, _ error) {
	name, err := ParseRepository(repository)
	if err != nil {
		return "", "", err
	}
	host, path := reference.Domain(mustNamed(name)), reference.Path(mustNamed(name))
	if path == s.repo {
		return "", "", fmt.Errorf("%s is rill's policy repository, not one to stream: %w", name, errdefs.ErrInvalidArgument)
	}
	repo = host + "/" + s.repo
	return repo + ":" + Tag(path), repo, nil
}

func mustNamed(name string) reference.Named {
	n, _ := reference.ParseNormalizedNamed(name)
	return n
}

// Get returns the policy of repository (host/path). A repository without one is disabled.
func (s *Store) Get(ctx context.Context, repository string) (Policy, error) {
	ref, _, err := s.ref(repository)
	if err != nil {
		return Policy{}, err
	}
	name, _ := ParseRepository(repository)
	p, err := s.read(ctx, ref)
	if errdefs.IsNotFound(err) {
		return Policy{Repository: name}, nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("read the policy of %s: %w", name, err)
	}
	if p.Repository != name {
		// Another repository's policy at this tag (a hash collision, or a hand-made tag):
		// this one has none.
		return Policy{Repository: name}, nil
	}
	return p, nil
}

// read reads the policy manifest at ref.
func (s *Store) read(ctx context.Context, ref string) (Policy, error) {
	desc, err := s.reg.Resolve(ctx, ref)
	if err != nil {
		return Policy{}, err
	}
	name, _, _ := strings.Cut(ref, ":"+tagPrefix)
	raw, err := s.reg.FetchManifest(ctx, name+"@"+desc.Digest.String(), desc)
	if err != nil {
		return Policy{}, err
	}
	p, err := Parse(raw)
	if err != nil {
		return Policy{}, err
	}
	p.Digest = desc.Digest
	return p, nil
}

// Parse reads a policy from its manifest.
func Parse(raw []byte) (Policy, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Policy{}, fmt.Errorf("parse the policy manifest: %w: %w", errdefs.ErrDataLoss, err)
	}
	if m.ArtifactType != ArtifactType {
		return Policy{}, fmt.Errorf("the manifest is of artifact type %q, not a rill policy: %w", m.ArtifactType, errdefs.ErrDataLoss)
	}
	a := m.Annotations
	p := Policy{Repository: a[AnnotationRepository], UpdatedBy: a[AnnotationUpdatedBy]}
	if p.Repository == "" {
		return Policy{}, fmt.Errorf("the policy manifest names no repository: %w", errdefs.ErrDataLoss)
	}
	var err error
	if p.Enabled, err = strconv.ParseBool(a[AnnotationEnabled]); err != nil {
		return Policy{}, fmt.Errorf("the policy of %s: enabled = %q: %w", p.Repository, a[AnnotationEnabled], errdefs.ErrDataLoss)
	}
	if t := a[AnnotationUpdated]; t != "" {
		p.Updated, _ = time.Parse(time.RFC3339Nano, t)
	}
	return p, nil
}

// Set writes the policy of repository (host/path) and returns what the registry then holds:
// normally what was written; another writer's policy if one wrote after.
func (s *Store) Set(ctx context.Context, repository string, enabled bool) (Policy, error) {
	ref, repo, err := s.ref(repository)
	if err != nil {
		return Policy{}, err
	}
	name, _ := ParseRepository(repository)
	empty := ocispec.DescriptorEmptyJSON
	if err := s.reg.PushBlob(ctx, repo, empty, bytes.NewReader(empty.Data)); err != nil {
		return Policy{}, fmt.Errorf("write the policy of %s: %w", name, err)
	}
	empty.Data = nil
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       empty,
		Layers:       []ocispec.Descriptor{empty},
		Annotations: map[string]string{
			AnnotationRepository: name,
			AnnotationEnabled:    strconv.FormatBool(enabled),
			AnnotationUpdated:    s.now().UTC().Format(time.RFC3339Nano),
			AnnotationUpdatedBy:  s.by,
		},
	}
	m.SchemaVersion = 2
	raw, err := json.Marshal(m)
	if err != nil {
		return Policy{}, err
	}
	if _, err := s.reg.PushManifest(ctx, ref, ocispec.MediaTypeImageManifest, raw); err != nil {
		return Policy{}, fmt.Errorf("write the policy of %s: %w", name, err)
	}
	return s.Get(ctx, name)
}

// List returns the policies of every repository of the registry host that has one, sorted by
// repository.
func (s *Store) List(ctx context.Context, host string) ([]Policy, error) {
	repo := host + "/" + s.repo
	tags, err := s.tags.Tags(ctx, repo)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the policies of %s: %w", host, err)
	}
	var out []Policy
	for _, tag := range tags {
		if !strings.HasPrefix(tag, tagPrefix) {
			continue
		}
		p, err := s.read(ctx, repo+":"+tag)
		if errdefs.IsNotFound(err) || errdefs.IsDataLoss(err) {
			continue // deleted meanwhile, or not ours
		}
		if err != nil {
			return nil, fmt.Errorf("list the policies of %s: %w", host, err)
		}
		named, err := reference.ParseNormalizedNamed(p.Repository)
		if err != nil || reference.Domain(named) != host || Tag(reference.Path(named)) != tag {
			continue // a policy copied to the wrong place is no policy
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Policy) int { return strings.Compare(a.Repository, b.Repository) })
	return out, nil
}
