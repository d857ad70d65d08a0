package watch

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/internal/regtest"
	"github.com/rillstream/rill/convert/operation"
)

// twin returns another watcher of f's registry and policies, with a state of its own (as a
// second instance on another machine), running until the test ends.
func (f *fixture) twin(t *testing.T) *Watcher {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	w, err := New(Config{Registry: f.host, Remote: f.reg, NewConverter: f.w.cfg.NewConverter, Policies: f.pol, StateDir: t.TempDir(),
		Queue: []operation.Option{operation.WithRetry(2, 10*time.Millisecond, 20*time.Millisecond)}, Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// Two watchers receiving the same events both work them, without coordinating: the work may
// be done twice (a second artifact, referrer only), but both operations end well and the tag
// is bound to an artifact of the manifest that was pushed, never to anything else.
func TestTwoWatchersSameEvents(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind)
			ctx := regtest.Ctx(t)
			repo := f.host + "/team/app"
			if _, err := f.pol.Set(ctx, repo, true); err != nil {
				t.Fatal(err)
			}
			g := f.twin(t)
			f.run(t)
			m := regtest.PushImage(t, f.reg, repo+":v1", "one")
			for _, w := range []*Watcher{f.w, g} {
				if _, err := w.consider(ctx, Push{Repository: "team/app", Tag: "v1", Digest: m.Digest, MediaType: m.MediaType, Size: m.Size}, "webhook", false); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(60 * time.Second)
			for {
				var all []operation.Operation
				for _, w := range []*Watcher{f.w, g} {
					all = append(all, w.Queue().List()...)
				}
				done := len(all) == 2
				for _, op := range all {
					done = done && op.State.Final()
				}
				if done {
					for _, op := range all {
						if op.State != operation.Succeeded {
							t.Fatalf("an operation of two watchers on the same push: %+v", op)
						}
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("operations not done after 60s: %+v", all)
				}
				time.Sleep(20 * time.Millisecond)
			}

			// The tag names a binding index that lists m unchanged, bound to an artifact of m.
			desc, err := f.reg.Resolve(ctx, repo+":v1")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := f.reg.FetchManifest(ctx, repo+"@"+desc.Digest.String(), desc)
			if err != nil {
				t.Fatal(err)
			}
			if k := convert.ClassifyManifest(desc.MediaType, raw); k != convert.KindBinding {
				t.Fatalf("the tag names a %s", k)
			}
			var idx ocispec.Index
			if err := json.Unmarshal(raw, &idx); err != nil {
				t.Fatal(err)
			}
			bound := ""
			for _, d := range idx.Manifests {
				if d.Digest == m.Digest {
					bound = d.Annotations[artifact.AnnotationBinding]
				}
			}
			arts, err := f.reg.Referrers(ctx, repo, m.Digest, artifact.ArtifactType)
			if err != nil {
				t.Fatal(err)
			}
			if len(arts) < 1 || len(arts) > 2 {
				t.Fatalf("%d artifacts of the manifest after two watchers' work, want 1 or 2", len(arts))
			}
			found := false
			for _, a := range arts {
				found = found || a.Digest.String() == bound
			}
			if !found {
				t.Fatalf("the tag binds %q, which is no artifact of the pushed manifest (%v)", bound, arts)
			}
			// Whatever happened, the status is usable.
			st := f.show(t, ctx, repo+":v1")
			if !st.Bound || len(st.Manifests) != 1 || len(st.Manifests[0].Artifacts) == 0 || st.Manifests[0].Artifacts[0].Problem != "" {
				t.Fatalf("rill show after two watchers: %+v", st)
			}
			t.Logf("%d artifact(s); the operations: %q, %q", len(arts), f.w.Queue().List()[0].Message, g.Queue().List()[0].Message)
		})
	}
}
