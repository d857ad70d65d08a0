package watch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/artifact"
	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/internal/regtest"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/policy"
	"github.com/rillstream/rill/remote"
)

type fixture struct {
	host    string
	reg     *remote.Registry
	w       *Watcher
	hook    *httptest.Server
	api     *Client
	pol     *policy.Store
	stopped chan struct{}
}

func newFixture(t *testing.T, kind string) *fixture {
	t.Helper()
	return newFixtureWith(t, kind, nil)
}

// newFixtureWith is newFixture with the watcher's config changed by change.
func newFixtureWith(t *testing.T, kind string, change func(*Config)) *fixture {
	t.Helper()
	f := &fixture{host: regtest.Start(t, kind, nil), reg: regtest.Registry(t)}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	newConverter := func(progress func(convert.Progress), extra ...convert.Option) (*convert.Converter, error) {
		opts := []convert.Option{convert.WithTempDir(t.TempDir()), convert.WithLogger(logrus.NewEntry(log))}
		if progress != nil {
			opts = append(opts, convert.WithProgress(progress))
		}
		return convert.New(f.reg, append(opts, extra...)...)
	}
	c, err := newConverter(nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.pol, err = policy.New(f.reg, c); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Registry: f.host, Remote: f.reg, NewConverter: newConverter, Policies: f.pol, StateDir: t.TempDir(),
		Queue: []operation.Option{operation.WithRetry(2, 10*time.Millisecond, 20*time.Millisecond)}, Log: logrus.NewEntry(log)}
	if change != nil {
		change(&cfg)
	}
	f.w, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.hook = httptest.NewServer(f.w.WebhookHandler())
	t.Cleanup(f.hook.Close)
	api := httptest.NewServer(f.w.APIHandler())
	t.Cleanup(api.Close)
	if f.api, err = NewClient(api.URL); err != nil {
		t.Fatal(err)
	}
	return f
}

// run starts the watcher (its first reconciliation included) until the test ends.
func (f *fixture) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f.stopped = make(chan struct{})
	go func() { f.w.Run(ctx); close(f.stopped) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.stopped:
		case <-time.After(20 * time.Second):
			t.Error("the watcher did not stop within 20s")
		}
	})
	// What a test does next is not raced by the reconciliation at start.
	select {
	case <-f.w.startReconciled:
	case <-time.After(20 * time.Second):
		t.Fatal("the watcher's first reconciliation did not end within 20s")
	}
}

// notify POSTs the registry's event for a push of d at repo:tag (tag "" for by digest).
func (f *fixture) notify(t *testing.T, mediaType, repo, tag string, d digest.Digest, size int64) {
	t.Helper()
	resp, err := http.Post(f.hook.URL, EventsMediaTypeV2, strings.NewReader(envelope(sizedEvent("push", mediaType, repo, tag, d, size))))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook answered %s", resp.Status)
	}
}

func (f *fixture) ops(t *testing.T) []operation.Operation {
	t.Helper()
	ops, err := f.api.List(regtest.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

// waitDone waits (bounded) until every operation has ended and returns them.
func (f *fixture) waitDone(t *testing.T) []operation.Operation {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ops := f.ops(t)
		done := true
		for _, op := range ops {
			done = done && op.State.Final()
		}
		if done {
			return ops
		}
		if time.Now().After(deadline) {
			t.Fatalf("operations still not done after 60s: %+v", ops)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// show is what `rill show ref` reports, through the watcher's own converter.
func (f *fixture) show(t *testing.T, ctx context.Context, ref string) *convert.Status {
	t.Helper()
	c, err := f.w.cfg.NewConverter(nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Show(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fixture) kindAt(t *testing.T, ref string) convert.ManifestKind {
	t.Helper()
	ctx := regtest.Ctx(t)
	desc, err := f.reg.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := f.reg.FetchManifest(ctx, ref, desc)
	if err != nil {
		t.Fatal(err)
	}
	return convert.ClassifyManifest(desc.MediaType, raw)
}

// A push to an enabled repository gets a bound artifact; the pushes that binding makes (the
// index at the tag, the artifact by digest, the fallback referrers index) start nothing; a
// push to a disabled repository starts nothing.
func TestWatchWebhook(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind)
			ctx := regtest.Ctx(t)
			f.run(t)
			if _, err := f.pol.Set(ctx, f.host+"/team/app", true); err != nil {
				t.Fatal(err)
			}
			m := regtest.PushImage(t, f.reg, f.host+"/team/app:v1", "one")
			f.notify(t, m.MediaType, "team/app", "v1", m.Digest, m.Size)
			ops := f.waitDone(t)
			if len(ops) != 1 || ops[0].State != operation.Succeeded || ops[0].Digest != m.Digest || ops[0].Trigger != "webhook" {
				t.Fatalf("after one push: %+v", ops)
			}
			if k := f.kindAt(t, f.host+"/team/app:v1"); k != convert.KindBinding {
				t.Fatalf("the tag names a %s after the watcher's work, not a binding index", k)
			}

			// What binding pushed, as the registry reports it.
			ctx2 := regtest.Ctx(t)
			bound, err := f.reg.Resolve(ctx2, f.host+"/team/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			f.notify(t, bound.MediaType, "team/app", "v1", bound.Digest, bound.Size)
			arts, err := f.reg.Referrers(ctx2, f.host+"/team/app", m.Digest, artifact.ArtifactType)
			if err != nil || len(arts) != 1 {
				t.Fatalf("referrers of %s: %v (%v)", m.Digest, arts, err)
			}
			f.notify(t, arts[0].MediaType, "team/app", "", arts[0].Digest, arts[0].Size)
			f.notify(t, "application/vnd.oci.image.index.v1+json", "team/app", remote.FallbackTag(m.Digest), digest.FromString("fallback"), 100)
			// The watcher's own policy writes.
			f.notify(t, "application/vnd.oci.image.manifest.v1+json", policy.DefaultRepository, policy.Tag("team/app"), digest.FromString("p"), 100)

			// A disabled repository.
			other := regtest.PushImage(t, f.reg, f.host+"/team/other:v1", "other")
			f.notify(t, other.MediaType, "team/other", "v1", other.Digest, other.Size)

			if ops := f.waitDone(t); len(ops) != 1 {
				t.Fatalf("rill's own pushes or a disabled repository started operations: %+v", ops)
			}
			// And reconciliation finds nothing left to do.
			if n, err := f.w.Reconcile(ctx2); err != nil || n != 0 {
				t.Fatalf("reconcile after the work queued %d (%v)", n, err)
			}
		})
	}
}

// Reconciliation converts what events missed (the repository enabled after the pushes, the
// watcher down), and a disabled repository keeps its artifacts but gets no new ones.
func TestWatchReconcile(t *testing.T) {
	for _, kind := range regtest.Kinds() {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind)
			ctx := regtest.Ctx(t)
			repo := f.host + "/team/app"
			regtest.PushImage(t, f.reg, repo+":v1", "one")
			regtest.PushImage(t, f.reg, repo+":v2", "two")
			if _, err := f.pol.Set(ctx, repo, true); err != nil {
				t.Fatal(err)
			}
			f.run(t) // reconciles at start
			deadline := time.Now().Add(30 * time.Second)
			for len(f.ops(t)) < 2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			ops := f.waitDone(t)
			if len(ops) != 2 {
				t.Fatalf("reconciliation queued %d operations, want 2: %+v", len(ops), ops)
			}
			for _, op := range ops {
				if op.State != operation.Succeeded || op.Trigger != "reconcile" {
					t.Fatalf("%+v", op)
				}
				if k := f.kindAt(t, op.Image()); k != convert.KindBinding {
					t.Fatalf("%s names a %s", op.Image(), k)
				}
			}

			if _, err := f.pol.Set(ctx, repo, false); err != nil {
				t.Fatal(err)
			}
			regtest.PushImage(t, f.reg, repo+":v3", "three")
			if n, err := f.w.Reconcile(ctx); err != nil || n != 0 {
				t.Fatalf("reconciling a disabled repository queued %d (%v)", n, err)
			}
			if k := f.kindAt(t, repo+":v1"); k != convert.KindBinding {
				t.Fatalf("disabling removed the binding of v1: %s", k)
			}
		})
	}
}

// A push the tag no longer names is superseded: the newer push wins and gets its own
// operation.
func TestWatchNewerPushWins(t *testing.T) {
	f := newFixture(t, "referrers-api")
	ctx := regtest.Ctx(t)
	repo := f.host + "/team/app"
	if _, err := f.pol.Set(ctx, repo, true); err != nil {
		t.Fatal(err)
	}
	old := regtest.PushImage(t, f.reg, repo+":v1", "old")
	f.notify(t, old.MediaType, "team/app", "v1", old.Digest, old.Size) // queued, not run yet
	newer := regtest.PushImage(t, f.reg, repo+":v1", "newer")
	f.run(t)
	deadline := time.Now().Add(30 * time.Second)
	for len(f.ops(t)) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	ops := f.waitDone(t)
	var sawOld, sawNew bool
	for _, op := range ops {
		switch op.Digest {
		case old.Digest:
			sawOld = strings.HasPrefix(op.Message, "superseded") && op.State == operation.Succeeded
		case newer.Digest:
			sawNew = op.State == operation.Succeeded
		}
	}
	if !sawOld || !sawNew {
		t.Fatalf("want the old push superseded and the newer converted: %+v", ops)
	}
	bound, err := f.reg.Resolve(ctx, repo+":v1")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := f.reg.FetchManifest(ctx, repo+"@"+bound.Digest.String(), bound)
	if !strings.Contains(string(raw), newer.Digest.String()) || strings.Contains(string(raw), old.Digest.String()) {
		t.Fatalf("the tag's binding index does not list the newer manifest only: %s", raw)
	}
}

// The API maps errors to what the CLI tells apart.
func TestAPIErrors(t *testing.T) {
	f := newFixture(t, "referrers-api")
	ctx := regtest.Ctx(t)
	if _, err := f.api.Get(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Get of an unknown operation: %v", err)
	}
	if _, err := NewClient("ftp://x"); err == nil {
		t.Fatal("a bad watcher address is accepted")
	}
	resp, err := http.Post(f.hook.URL, EventsMediaType, strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a broken envelope: %s, want 400", resp.Status)
	}
}
