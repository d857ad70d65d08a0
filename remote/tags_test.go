package remote

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/rillstream/rill/internal/regtest"
)

var linuxAMD64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}

// A repository's tags are listed, and a manifest deleted by tag or by digest, on each kind of
// registry; the watcher and `rill delete` rely on both.
func TestTagsAndDeleteManifest(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			host := regtest.Start(t, kind, nil)
			r := testRegistry(t, WithDefaultScheme("http"))
			repo := host + "/team/app"
			v1 := pushImage(t, r, repo+":v1", 1, linuxAMD64)
			pushImage(t, r, repo+":v2", 2, linuxAMD64)

			tags, err := r.Tags(testCtx(t), repo)
			slices.Sort(tags)
			if err != nil || !slices.Equal(tags, []string{"v1", "v2"}) {
				t.Fatalf("tags: %v, %v; want [v1 v2]", tags, err)
			}
			if _, err := r.Tags(testCtx(t), host+"/team/none"); !errdefs.IsNotFound(err) {
				t.Errorf("tags of a repository that does not exist: %v, want NotFound", err)
			}

			// By tag: registries that cannot delete tags say NotImplemented.
			if err := r.DeleteManifest(testCtx(t), repo+":v2"); err != nil && !errdefs.IsNotImplemented(err) {
				t.Errorf("delete by tag: %v", err)
			}
			if err := r.DeleteManifest(testCtx(t), repo+"@"+v1.manifest.Digest.String()); err != nil {
				t.Fatalf("delete by digest: %v", err)
			}
			if _, err := r.Resolve(testCtx(t), repo+"@"+v1.manifest.Digest.String()); !errdefs.IsNotFound(err) {
				t.Errorf("resolve a deleted manifest: %v, want NotFound", err)
			}
			if err := r.DeleteManifest(testCtx(t), repo+"@"+v1.manifest.Digest.String()); !errdefs.IsNotFound(err) {
				t.Errorf("delete it again: %v, want NotFound", err)
			}
		})
	}
}
