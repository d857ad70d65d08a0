package policy

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/internal/regtest"
	"github.com/rillstream/rill/remote"
)

func newStore(t *testing.T, reg *remote.Registry, by string) *Store {
	t.Helper()
	c, err := convert.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	s, err := New(reg, c, WithActor(by), WithClock(func() time.Time { clock = clock.Add(time.Second); return clock }))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// What an operator relies on: a repository is disabled until enabled; enabling and
// disabling are seen by every store over the same registry (as by every watcher); listing
// finds every repository's policy; other repositories are untouched.
func TestPolicyLifecycle(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			host := regtest.Start(t, kind, nil)
			ctx := regtest.Ctx(t)
			reg := regtest.Registry(t)
			alice, bob := newStore(t, reg, "alice@a"), newStore(t, regtest.Registry(t), "bob@b")
			app, web := host+"/team/app", host+"/team/web"

			if ps, err := alice.List(ctx, host); err != nil || len(ps) != 0 {
				t.Fatalf("a fresh registry lists policies %v (%v)", ps, err)
			}
			if p, err := bob.Get(ctx, app); err != nil || p.Enabled || p.Repository != app || !p.Updated.IsZero() {
				t.Fatalf("a repository without a policy: %+v (%v), want disabled", p, err)
			}
			p, err := alice.Set(ctx, app, true)
			if err != nil || !p.Enabled || p.UpdatedBy != "alice@a" || p.Digest == "" {
				t.Fatalf("enable: %+v (%v)", p, err)
			}
			if p, err := bob.Get(ctx, app); err != nil || !p.Enabled || p.UpdatedBy != "alice@a" {
				t.Fatalf("another store does not see the enabled policy: %+v (%v)", p, err)
			}
			if p, err := bob.Get(ctx, web); err != nil || p.Enabled {
				t.Fatalf("enabling %s enabled %s: %+v (%v)", app, web, p, err)
			}
			if _, err := bob.Set(ctx, web, true); err != nil {
				t.Fatal(err)
			}
			if p, err := bob.Set(ctx, app, false); err != nil || p.Enabled || p.UpdatedBy != "bob@b" {
				t.Fatalf("disable: %+v (%v)", p, err)
			}
			ps, err := alice.List(ctx, host)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprint(len(ps))
			for _, p := range ps {
				got += fmt.Sprintf(" %s=%v", p.Repository, p.Enabled)
			}
			if want := fmt.Sprintf("2 %s=false %s=true", app, web); got != want {
				t.Errorf("List = %s, want %s", got, want)
			}
		})
	}
}

// Writers of different repositories at the same time never lose each other's change: each
// repository's policy is its own manifest.
func TestPolicyConcurrentWriters(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			host := regtest.Start(t, kind, nil)
			ctx := regtest.Ctx(t)
			const n = 8
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i := range n {
				s := newStore(t, regtest.Registry(t), fmt.Sprintf("writer%d@x", i))
				wg.Go(func() { _, errs[i] = s.Set(ctx, fmt.Sprintf("%s/app%d", host, i), true) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("writer %d: %v", i, err)
				}
			}
			ps, err := newStore(t, regtest.Registry(t), "reader@x").List(ctx, host)
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != n {
				t.Fatalf("after %d concurrent enables, %d policies are listed: %+v", n, len(ps), ps)
			}
			for _, p := range ps {
				if !p.Enabled {
					t.Errorf("%s lost its enable", p.Repository)
				}
			}
		})
	}
}

func TestParseRepositoryRefusesTagsAndDigests(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "registry.example.com/team/app", want: "registry.example.com/team/app"},
		{in: "127.0.0.1:5000/app", want: "127.0.0.1:5000/app"},
		{in: "team/app", want: "docker.io/team/app"},
		{in: "team/app:v1", bad: true},
		{in: "team/app@sha256:" + fmt.Sprintf("%064d", 0), bad: true},
		{in: "Team/App", bad: true},
		{in: "", bad: true},
	} {
		got, err := ParseRepository(tc.in)
		if tc.bad {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("ParseRepository(%q) = %q, %v; want InvalidArgument", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRepository(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// The policy repository itself cannot be enabled (its pushes are never images).
func TestPolicyRepositoryIsNotAPolicyTarget(t *testing.T) {
	host := regtest.Start(t, "referrers-api", nil)
	s := newStore(t, regtest.Registry(t), "x@y")
	if _, err := s.Set(regtest.Ctx(t), host+"/"+DefaultRepository, true); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("enabling the policy repository: %v, want InvalidArgument", err)
	}
	if !s.IsPolicyRepository(DefaultRepository) || s.IsPolicyRepository("team/app") {
		t.Fatal("IsPolicyRepository is wrong")
	}
}
