package credentials

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/rillstream/rill/remote"
	"github.com/sirupsen/logrus"
)

func logCtx(t *testing.T) (context.Context, *bytes.Buffer) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	l.SetLevel(logrus.TraceLevel)
	return log.WithLogger(context.Background(), logrus.NewEntry(l)), &buf
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// The life of captured credentials: kept while a pull or a streamed layer needs them, on disk
// only root can read, across a restart, and gone with the last layer.
func TestStoreLifecycle(t *testing.T) {
	ctx, logs := logCtx(t)
	dir := filepath.Join(t.TempDir(), "credentials")
	const image = "reg.example.com:5000/team/app:v1"
	app := Scope{Host: "reg.example.com:5000", Repository: "team/app"}
	cred := remote.Credential{Username: "alice", Secret: "s3cret-PASSWORD"}

	s, err := OpenStore(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store directory mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	done, err := s.Capture(ctx, image, cred, "default/web")
	if err != nil {
		t.Fatal(err)
	}
	if got := lookup(t, s, app); len(got) != 1 || got[0] != cred {
		t.Fatalf("during the pull: %v", len(got))
	}
	if got := lookup(t, s, Scope{Host: app.Host, Repository: "team/other"}); len(got) != 0 {
		t.Fatal("credentials of one repository offered for another")
	}
	s.LayerServed(ctx, "7", "reg.example.com:5000/team/app@sha256:"+strings.Repeat("a", 64))
	done(true)
	names := files(t, dir)
	if len(names) != 1 {
		t.Fatalf("files in the store after a streamed pull: %v, want one", names)
	}
	fi, err = os.Stat(filepath.Join(dir, names[0]))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}

	// A restart: the file is read back, and serves once the layer is restored.
	s2, err := OpenStore(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.LayerServed(ctx, "7", "reg.example.com:5000/team/app@sha256:"+strings.Repeat("a", 64))
	s2.Prune(ctx)
	if got := lookup(t, s2, app); len(got) != 1 || got[0] != cred {
		t.Fatal("credentials lost across a restart")
	}
	s2.LayerRemoved(ctx, "7", "")
	if got := lookup(t, s2, app); len(got) != 0 {
		t.Fatal("credentials kept after the last layer using them was removed")
	}
	if names := files(t, dir); len(names) != 0 {
		t.Fatalf("files left after the last layer was removed: %v", names)
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Fatalf("logs show the secret:\n%s", logs)
	}
}

func TestStoreForgetsWhatNoLayerUses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenStore(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	app := Scope{Host: "reg.example.com", Repository: "app"}
	good, bad := remote.Credential{Username: "u", Secret: "good"}, remote.Credential{Username: "u", Secret: "bad"}

	// A full pull (nothing streamed): the credentials go when it ends.
	done, _ := s.Capture(ctx, "reg.example.com/app:v1", good, "ns/a")
	done(true)
	if got := lookup(t, s, app); len(got) != 0 || len(files(t, dir)) != 0 {
		t.Fatal("credentials of a pull that streamed nothing kept")
	}

	// A streamed layer, then another pod's pull with a wrong secret: that one is forgotten,
	// the first is kept.
	done, _ = s.Capture(ctx, "reg.example.com/app:v1", good, "ns/a")
	s.LayerServed(ctx, "1", "reg.example.com/app@sha256:"+strings.Repeat("b", 64))
	done(true)
	done, _ = s.Capture(ctx, "reg.example.com/app:v1", bad, "ns/b")
	if got := lookup(t, s, app); len(got) != 2 || got[0] != bad || got[1] != good {
		t.Fatalf("during the second pull: want the newest first, then the older (%d)", len(got))
	}
	done(false)
	if got := lookup(t, s, app); len(got) != 1 || got[0] != good {
		t.Fatalf("after a failed pull: %d credentials, want the confirmed one", len(got))
	}

	// At start, credentials no restored layer uses go.
	s2, err := OpenStore(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	s2.Prune(ctx)
	if len(files(t, dir)) != 0 || len(lookup(t, s2, app)) != 0 {
		t.Fatal("credentials no restored layer uses survived the start")
	}
}

func TestStoreSurvivesGarbage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "0123.json"), []byte("{not json"), 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("partial"), 0o600)
	s, err := OpenStore(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if names := files(t, dir); len(names) != 0 {
		t.Fatalf("unreadable files kept: %v", names)
	}
	if _, err := s.Capture(ctx, "no spaces allowed:v1", remote.Credential{Username: "u", Secret: "p"}, ""); err == nil {
		t.Fatal("an invalid image reference was captured")
	}
}
