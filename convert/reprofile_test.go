package convert

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/remote"
)

// An operator adds a prefetch profile to an image that already has a streaming artifact, while
// another tag of the same image is bound to that artifact: the tag gets an artifact with the
// profile (its layers reused, not converted again), and the other tag keeps streaming the old
// one. --force later rebuilds, and still keeps what the other tag is bound to.
func TestProfileForExistingArtifact(t *testing.T) {
	for _, kind := range registryKinds() {
		t.Run(kind, func(t *testing.T) {
			ctx := testCtx(t)
			host := startRegistry(t, kind, nil)
			reg := testRegistry(t)
			c := testConverter(t, reg)
			v1, v2 := host+"/app:v1", host+"/app:v2"
			img := pushImage(t, reg, v1, imageSpec{platform: linuxAMD64, layers: twoLayers()})
			raw := fetchTag(t, reg, v1)
			if _, err := reg.PushManifest(ctx, v2, img.manifest.MediaType, raw); err != nil {
				t.Fatal(err)
			}
			first, err := c.Create(ctx, v1, CreateOptions{Bind: true})
			if err != nil {
				t.Fatal(err)
			}
			s := first.Artifacts[0].Artifact
			if res, err := c.Create(ctx, v2, CreateOptions{Bind: true}); err != nil || !res.Artifacts[0].Existing {
				t.Fatalf("create v2: %v %+v", err, res)
			}

			profile := []string{"etc/hostname", "opt/app/bin/server"}
			res, err := c.Create(ctx, v1, CreateOptions{Bind: true, Profile: profile})
			if err != nil {
				t.Fatalf("create with a profile: %v", err)
			}
			a := res.Artifacts[0]
			if a.Existing || a.Reprofiled != s.Digest || a.Artifact.Digest == s.Digest || res.Unchanged || !res.Bound || res.ProfileKept != len(profile) {
				t.Fatalf("create with a profile for an existing artifact: %+v", res)
			}
			assertArtifact(t, reg, img, a.Artifact, profile)
			if layers(t, reg, repoOf(v1), a.Artifact) == nil || !slices.Equal(layers(t, reg, repoOf(v1), a.Artifact), layers(t, reg, repoOf(v1), s)) {
				t.Errorf("the artifact with the profile does not reuse the layers of %s", s.Digest)
			}
			assertBinding(t, reg, v1, map[digest.Digest]digest.Digest{img.manifest.Digest: a.Artifact.Digest}, []digest.Digest{img.manifest.Digest})
			assertBinding(t, reg, v2, map[digest.Digest]digest.Digest{img.manifest.Digest: s.Digest}, []digest.Digest{img.manifest.Digest})

			st, err := c.Show(ctx, v1)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Manifests[0].Artifacts[0]; got.Descriptor.Digest != a.Artifact.Digest || !got.Bound || got.ProfileEntries != len(profile) {
				t.Errorf("show lists first %+v, want the bound %s with %d profile entries", got, a.Artifact.Digest, len(profile))
			}

			// The same profile again changes nothing.
			again, err := c.Create(ctx, v1, CreateOptions{Bind: true, Profile: profile})
			if err != nil || !again.Unchanged || !again.Artifacts[0].Existing || again.Artifacts[0].Artifact.Digest != a.Artifact.Digest {
				t.Fatalf("the same profile again: %v %+v", err, again)
			}

			forced, err := c.Create(ctx, v1, CreateOptions{Bind: true, Force: true, Profile: []string{"opt/app/lib/libapp.so"}})
			if err != nil {
				t.Fatalf("create --force: %v", err)
			}
			if !slices.Equal(forced.Removed, []digest.Digest{a.Artifact.Digest}) || !slices.Equal(forced.KeptBoundElsewhere, []digest.Digest{s.Digest}) {
				t.Errorf("--force removed %v and kept %v; want %s removed, %s (bound to v2) kept", forced.Removed, forced.KeptBoundElsewhere, a.Artifact.Digest, s.Digest)
			}
			assertBinding(t, reg, v2, map[digest.Digest]digest.Digest{img.manifest.Digest: s.Digest}, []digest.Digest{img.manifest.Digest})
			if _, err := reg.Resolve(ctx, repoOf(v2)+"@"+s.Digest.String()); err != nil {
				t.Errorf("the artifact v2 is bound to is gone: %v", err)
			}
		})
	}
}

// layers returns the layer digests of the artifact manifest d.
func layers(t *testing.T, reg *remote.Registry, repo string, d ocispec.Descriptor) []digest.Digest {
	t.Helper()
	raw, err := reg.FetchManifest(testCtx(t), repo+"@"+d.Digest.String(), d)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var out []digest.Digest
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}
