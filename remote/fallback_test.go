package remote

import (
	"fmt"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rillstream/rill/internal/regtest"
)

// Referrers pushed at the same time to a registry without the referrers API all end up in the
// fallback index: each writer reads the index back after it writes it and writes again when a
// concurrent writer's update replaced its own.
func TestConcurrentReferrerPushesKeepEveryEntry(t *testing.T) {
	host := regtest.Distribution(t, "")
	r := testRegistry(t)
	ctx := testCtx(t)
	img := pushImage(t, r, host+"/app/img:v1", 5, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	const writers = 8
	pushed := make([]ocispec.Descriptor, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pushed[i] = pushArtifact(t, r, host+"/app/img", img.manifest, fmt.Sprintf("application/vnd.example.kind-%d", i))
		}()
	}
	wg.Wait()
	got, err := r.Referrers(ctx, host+"/app/img", img.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[digest.Digest]bool{}
	for _, d := range got {
		listed[d.Digest] = true
	}
	for i, d := range pushed {
		if !listed[d.Digest] {
			t.Errorf("referrer %d (%s) pushed concurrently with %d others is missing from the fallback index (it lists %d)", i, d.Digest, writers-1, len(got))
		}
	}
}
