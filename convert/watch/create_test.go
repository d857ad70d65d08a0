package watch

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/internal/regtest"
	"github.com/rillstream/rill/convert/operation"
)

// rill create --no-wait: the operator's create is queued at once and done by the watcher,
// with the operator's choices, in a repository whose automatic creation is off.
func TestAPICreate(t *testing.T) {
	f := newFixture(t, "referrers-api")
	ctx := regtest.Ctx(t)
	repo := f.host + "/team/app" // not enabled
	m := regtest.PushImage(t, f.reg, repo+":v1", "one")
	f.run(t)

	op, err := f.api.Create(ctx, CreateRequest{Image: repo + ":v1", Create: operation.CreateSpec{Profile: []string{"content"}}})
	if err != nil {
		t.Fatal(err)
	}
	if op.ID == "" || op.Digest != m.Digest || op.Tag != "v1" || op.Trigger != "rill create" || op.Create == nil {
		t.Fatalf("the queued operation: %+v", op)
	}
	ops := f.waitDone(t)
	if len(ops) != 1 || ops[0].State != operation.Succeeded || !strings.Contains(ops[0].Message, "bound") {
		t.Fatalf("after the create: %+v", ops)
	}
	if k := f.kindAt(t, repo+":v1"); k != convert.KindBinding {
		t.Fatalf("the tag names a %s after the create, not a binding index", k)
	}
	st := f.show(t, ctx, repo+":v1")
	if len(st.Manifests) != 1 || len(st.Manifests[0].Artifacts) != 1 || st.Manifests[0].Artifacts[0].ProfileEntries != 1 {
		t.Fatalf("rill show after the create: %+v", st)
	}

	// By digest, --no-bind, --force: another artifact, referrer only, the old one replaced.
	op, err = f.api.Create(ctx, CreateRequest{Image: repo + "@" + m.Digest.String(), Create: operation.CreateSpec{Force: true}})
	if err != nil {
		t.Fatal(err)
	}
	if op.Tag != "" || op.Image() != repo+"@"+m.Digest.String() {
		t.Fatalf("a create by digest: %+v", op)
	}
	for _, o := range f.waitDone(t) {
		if o.ID == op.ID && (o.State != operation.Succeeded || !strings.Contains(o.Message, "referrers only")) {
			t.Fatalf("a create by digest: %+v", o)
		}
	}
}

// What the watcher cannot do is refused at once, with the error kind the CLI tells apart.
func TestAPICreateRefused(t *testing.T) {
	f := newFixture(t, "referrers-api")
	ctx := regtest.Ctx(t)
	regtest.PushImage(t, f.reg, f.host+"/team/app:v1", "one")
	cases := []struct {
		name string
		req  CreateRequest
		kind func(error) bool
	}{
		{"another registry", CreateRequest{Image: "registry.example.com/team/app:v1"}, errdefs.IsInvalidArgument},
		{"not a reference", CreateRequest{Image: "UPPER::x"}, errdefs.IsInvalidArgument},
		{"no such image", CreateRequest{Image: f.host + "/team/app:missing"}, errdefs.IsNotFound},
		{"bad platform", CreateRequest{Image: f.host + "/team/app:v1", Create: operation.CreateSpec{Platforms: []string{"linux/"}}}, errdefs.IsInvalidArgument},
		{"bad chunk size", CreateRequest{Image: f.host + "/team/app:v1", Create: operation.CreateSpec{ChunkSize: 10}}, errdefs.IsInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := f.api.Create(ctx, c.req); !c.kind(err) {
				t.Fatalf("Create(%+v): %v", c.req, err)
			}
		})
	}
	if ops := f.ops(t); len(ops) != 0 {
		t.Fatalf("refused creates left operations: %+v", ops)
	}
}
