package remote

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/rillstream/rill/internal/regtest"
)

// listKeychain gives, per repository, the first of its credentials the registry has not
// refused, and records what it was asked and told.
type listKeychain struct {
	mu      sync.Mutex
	creds   map[string][]Credential // by repository
	refused []Credential
	asked   []string // host/repository
}

func (k *listKeychain) Credential(_ context.Context, host, repo string) (Credential, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.asked = append(k.asked, host+"/"+repo)
	for _, c := range k.creds[repo] {
		if !slices.Contains(k.refused, c) {
			return c, nil
		}
	}
	return Credential{}, nil
}

func (k *listKeychain) Refused(_ context.Context, _, _ string, c Credential) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.refused = append(k.refused, c)
}

func (k *listKeychain) state() (asked []string, refused []Credential) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.asked), slices.Clone(k.refused)
}

// A credential the registry refuses is reported to the keychain, and the same read goes on
// with the keychain's next credential: basic auth, the token flow, and a bearer token given as
// it is (CRI's registry_token).
func TestKeychainRefusedCredentialGivesWayToTheNext(t *testing.T) {
	old := Credential{Username: "bob", Secret: "old-PASSWORD"}
	fresh := Credential{Username: "bob", Secret: "fresh-PASSWORD"}
	for _, tc := range []struct {
		name    string
		require func(f *blobFixture)
	}{
		{"basic", func(f *blobFixture) { f.proxy.RequireBasic("bob", "fresh-PASSWORD") }},
		{"token", func(f *blobFixture) { f.proxy.RequireToken("bob", "fresh-PASSWORD", 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &listKeychain{creds: map[string][]Credential{"test/blob": {old, fresh}}}
			f := newBlobFixture(t, regtest.InProcess(t, true))
			f.reg = testRegistry(t, WithKeychain(k))
			tc.require(f)
			if err := f.check(t, f.reader(t), Range{0, 4096}); err != nil {
				t.Fatalf("read with a refused first credential and a good second: %v", err)
			}
			asked, refused := k.state()
			if !slices.Equal(refused, []Credential{old}) {
				t.Errorf("keychain told of refusals %v, want only the old credential", len(refused))
			}
			for _, a := range asked {
				if a != f.proxy.Host+"/test/blob" {
					t.Errorf("keychain asked for %q, want the blob's host and repository", a)
				}
			}
			// Later reads keep the good credential: no more refusals.
			if err := f.check(t, f.reader(t), Range{4096, 4096}); err != nil {
				t.Fatal(err)
			}
			if _, refused := k.state(); len(refused) != 1 {
				t.Errorf("%d refusals after a second read, want still 1", len(refused))
			}
		})
	}
	t.Run("credentials are per repository", func(t *testing.T) {
		k := &listKeychain{creds: map[string][]Credential{"other/repo": {fresh}, "test/blob": {old}}}
		f := newBlobFixture(t, regtest.InProcess(t, true))
		f.reg = testRegistry(t, WithKeychain(k))
		f.proxy.RequireBasic("bob", "fresh-PASSWORD")
		if _, err := f.reader(t).ReadAt(make([]byte, 10), 0); err == nil {
			t.Fatal("read with another repository's credential succeeded")
		}
	})
}

// Reads without credentials fail, and succeed once the keychain has some.
func TestKeychainCredentialsArrivingLater(t *testing.T) {
	k := &listKeychain{creds: map[string][]Credential{}}
	f := newBlobFixture(t, regtest.InProcess(t, true))
	f.reg = testRegistry(t, WithKeychain(k))
	f.proxy.RequireBasic("bob", "fresh-PASSWORD")
	br := f.reader(t)
	for range 2 {
		if _, err := br.ReadAt(make([]byte, 10), 0); err == nil {
			t.Fatal("read without credentials succeeded")
		}
	}
	k.mu.Lock()
	k.creds["test/blob"] = []Credential{{Username: "bob", Secret: "fresh-PASSWORD"}}
	k.mu.Unlock()
	if err := f.check(t, br, Range{0, 4096}); err != nil {
		t.Fatalf("read once the keychain has the credential: %v", err)
	}
}
