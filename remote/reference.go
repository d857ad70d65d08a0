package remote

import (
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// repoRef is a parsed image reference: registry host, repository, and tag and/or digest.
type repoRef struct {
	host   string
	repo   string
	tag    string
	digest digest.Digest
}

// parseRef parses and normalises ref as Docker does ("alpine" is
// docker.io/library/alpine:latest when a tag is wanted).
func parseRef(ref string) (repoRef, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return repoRef{}, fmt.Errorf("parse reference %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	r := repoRef{host: reference.Domain(named), repo: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		r.tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.digest = d.Digest()
	}
	return r, nil
}

func (r repoRef) String() string {
	s := r.host + "/" + r.repo
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest.String()
	}
	return s
}

// object is what a manifest request names: the digest when there is one, else the tag
// (latest when neither).
func (r repoRef) object() string {
	if r.digest != "" {
		return r.digest.String()
	}
	if r.tag != "" {
		return r.tag
	}
	return "latest"
}
