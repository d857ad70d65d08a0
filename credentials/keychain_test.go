package credentials

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rillstream/rill/remote"
)

type fixedSource struct {
	name  string
	creds []remote.Credential
	err   error
}

func (f fixedSource) Name() string { return f.name }

func (f fixedSource) Lookup(context.Context, Scope) ([]Candidate, error) {
	var out []Candidate
	for _, c := range f.creds {
		out = append(out, Candidate{Credential: c, Origin: f.name})
	}
	return out, f.err
}

func TestKeychainOrderAndRefusals(t *testing.T) {
	ctx := context.Background()
	cri1, cri2 := remote.Credential{Username: "u", Secret: "cri-1"}, remote.Credential{Username: "u", Secret: "cri-2"}
	prov := remote.Credential{Username: "u", Secret: "provider"}
	docker := remote.Credential{Username: "u", Secret: "docker"}
	k := NewKeychain(
		fixedSource{name: "cri", creds: []remote.Credential{cri1, cri2}},
		fixedSource{name: "broken", err: errors.New("plugin failed")},
		fixedSource{name: "provider", creds: []remote.Credential{prov}},
		nil,
		fixedSource{name: "docker", creds: []remote.Credential{docker}},
	)
	now := time.Now()
	k.now = func() time.Time { return now }
	get := func() remote.Credential {
		t.Helper()
		c, err := k.Credential(ctx, "registry-1.docker.io", "library/app")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for i, want := range []remote.Credential{cri1, cri2, prov, docker, {}} {
		got := get()
		if got != want {
			t.Fatalf("step %d: got %q, want %q", i, got.Secret, want.Secret)
		}
		k.Refused(ctx, "index.docker.io", "library/app", got) // another name of the same registry
	}
	// Refusals are per repository, and forgotten after a while.
	if c, _ := k.Credential(ctx, "docker.io", "library/other"); c != cri1 {
		t.Fatalf("another repository: %q", c.Secret)
	}
	now = now.Add(DefaultRefusalMemory + time.Second)
	if got := get(); got != cri1 {
		t.Fatalf("after the refusal memory: %q, want the first credential again", got.Secret)
	}
}
