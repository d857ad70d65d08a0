package credentials

import (
	"fmt"

	"github.com/distribution/reference"
)

// Scope is what a credential is for: a repository of a registry.
type Scope struct {
	// Host is the registry host as image references name it ("registry.example.com:5000";
	// Docker Hub is "docker.io").
	Host string `json:"host"`
	// Repository is the repository's path on the host ("team/app", "library/busybox").
	Repository string `json:"repository"`
}

func (s Scope) String() string { return s.Host + "/" + s.Repository }

// ScopeOf returns the scope of an image reference ("registry.example.com/team/app:v1",
// "busybox", "host:5000/app@sha256:...").
func ScopeOf(ref string) (Scope, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return Scope{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return Scope{Host: reference.Domain(named), Repository: reference.Path(named)}, nil
}

// NormalizeHost maps the names of Docker Hub's registry to "docker.io", the name image
// references use; other hosts are returned as they are.
func NormalizeHost(host string) string {
	switch host {
	case "registry-1.docker.io", "index.docker.io", "docker.io":
		return "docker.io"
	}
	return host
}
