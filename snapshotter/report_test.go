package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/artifact"
	rillfs "github.com/rillstream/rill/fs"
	"github.com/rillstream/rill/internal/testlayer"
)

// artifactResolver streams the local layers as the layers of one streaming artifact.
type artifactResolver struct {
	*localResolver
	art digest.Digest
}

func (r artifactResolver) Resolve(ctx context.Context, l LayerLabels) (RemoteLayer, error) {
	rl, err := r.localResolver.Resolve(ctx, l)
	rl.Artifact = r.art
	return rl, err
}

// fakeWatcher is a watcher's profile endpoint that fails the first requests it is told to.
type fakeWatcher struct {
	mu       sync.Mutex
	failures int // answer 503 to this many requests first
	refuse   map[digest.Digest]bool
	requests int
	got      []artifact.ProfileReport
	arrived  chan struct{}
}

func (f *fakeWatcher) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if r.URL.Path != artifact.ProfileReportPath || r.Header.Get("Authorization") != "Bearer secret" {
		http.Error(rw, "wrong path or token", http.StatusUnauthorized)
		return
	}
	if f.failures > 0 {
		f.failures--
		http.Error(rw, "down", http.StatusServiceUnavailable)
		return
	}
	var rep artifact.ProfileReport
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	if f.refuse[rep.Artifact] {
		http.Error(rw, "no path is a file of the image", http.StatusBadRequest)
		return
	}
	f.got = append(f.got, rep)
	rw.WriteHeader(http.StatusAccepted)
	f.arrived <- struct{}{}
}

func (f *fakeWatcher) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.requests }

// A node that recorded an image's start reports the profile to the fleet's watcher for the
// artifact it streamed: retried while the watcher is down, once only (a restart included),
// and a refused report is not sent again.
func TestRecordedProfileIsReported(t *testing.T) {
	requireRoot(t)
	fw := &fakeWatcher{failures: 2, refuse: map[digest.Digest]bool{}, arrived: make(chan struct{}, 10)}
	srv := httptest.NewServer(fw)
	t.Cleanup(srv.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sender := &HTTPProfileSender{URL: srv.URL, TokenFile: tokenFile}

	local, digests := newLocalResolver(t, []testlayer.Entry{
		testlayer.Reg("bin/app", []byte("app"), 0o755),
		testlayer.Reg("etc/app.conf", []byte("conf"), 0o644),
	})
	art := digest.FromString("the artifact")
	ctx := namespaces.WithNamespace(context.Background(), "rill-test")
	root := t.TempDir()
	sn, err := NewSnapshotter(ctx, root, WithResolver(artifactResolver{local, art}), WithRecordWindow(time.Hour), WithProfileReports(sender, "node-a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	sn.recs.reports.backoff = func(int) time.Duration { return 10 * time.Millisecond }
	d := digests[0]
	if _, err := sn.Prepare(ctx, "extract", "", unpackLabels("chain", d, local.layers[d].conv.TOCDigest)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	view, release := mountView(t, ctx, sn, "view", "chain")
	defer release()
	if _, err := os.ReadFile(filepath.Join(view, "bin/app")); err != nil {
		t.Fatal(err)
	}
	// The window is long, so that a slow machine records the read; its end is now.
	sn.writeProfile("127.0.0.1:5000/app:v1")
	select {
	case <-fw.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("no profile report reached the watcher within 30s")
	}
	fw.mu.Lock()
	rep := fw.got[0]
	requests := fw.requests
	fw.mu.Unlock()
	if rep.Artifact != art || rep.Image != "127.0.0.1:5000/app:v1" || rep.Node != "node-a" || rep.WindowSeconds != 3600 || !slices.Equal(rep.Paths, []string{"/bin/app"}) {
		t.Fatalf("report %+v", rep)
	}
	if requests != 3 {
		t.Errorf("%d requests; want 2 failed and 1 accepted", requests)
	}

	// Once per artifact: again, and after a restart (a new reporter on the same root).
	sn.recs.reports.send(rep)
	sn.recs.reports.wg.Wait() // what was started is finished, not given up
	again := newReporter(root, sender, "node-a")
	again.send(rep)
	again.wg.Wait()
	again.stop()
	if n := fw.count(); n != requests {
		t.Errorf("the reported profile was sent again: %d requests, had %d", n, requests)
	}

	// A refused report is remembered too.
	other := rep
	other.Artifact = digest.FromString("another artifact")
	fw.mu.Lock()
	fw.refuse[other.Artifact] = true
	fw.mu.Unlock()
	r := newReporter(root, sender, "node-a")
	r.send(other)
	r.wg.Wait()
	r.stop()
	r = newReporter(root, sender, "node-a")
	r.send(other)
	r.wg.Wait()
	r.stop()
	if n := fw.count(); n != requests+1 {
		t.Errorf("a refused report: %d requests in all, want %d (one refusal, not retried)", n, requests+1)
	}
}

// A hostile profile costs at most the budget: files the layer does not have, directories and
// files past the budget are not prefetched.
func TestPrefetchOfAProfileIsBounded(t *testing.T) {
	local, digests := newLocalResolver(t, []testlayer.Entry{
		testlayer.Dir("etc/", 0o755),
		testlayer.Reg("etc/small", []byte("small"), 0o644),
		testlayer.Reg("big", testlayer.RandomBytes(1, 100<<10), 0o644),
		testlayer.Reg("etc/other", []byte("other"), 0o644),
	})
	l := local.layers[digests[0]]
	toc, err := rillfs.LoadTOC(context.Background(), bytes.NewReader(l.blob), int64(len(l.blob)), l.conv.TOCDigest, rillfs.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := rillfs.NewIndex(toc)
	if err != nil {
		t.Fatal(err)
	}
	got := prefetchPaths(idx, []string{"etc/small", "../../etc/shadow", "etc", "nothing", "big", "etc/other"}, 64<<10)
	if !slices.Equal(got, []string{"etc/small", "etc/other"}) {
		t.Errorf("prefetched %v; want only the image's files within the budget", got)
	}
}
