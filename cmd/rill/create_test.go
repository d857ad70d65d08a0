package main

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/rillstream/rill/convert"
	"github.com/rillstream/rill/convert/operation"
	"github.com/rillstream/rill/convert/policy"
	"github.com/rillstream/rill/convert/watch"
	"github.com/rillstream/rill/remote"
)

// startWatcher runs a watcher of the registry at host, its API over HTTP, until the test
// ends, and returns the API's address.
func startWatcher(t *testing.T, host string) string {
	t.Helper()
	reg, err := remote.New(remote.WithDefaultScheme("http"), remote.WithCredentials(remote.Anonymous()), remote.WithHostsDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	newConverter := func(progress func(convert.Progress), extra ...convert.Option) (*convert.Converter, error) {
		opts := []convert.Option{convert.WithTempDir(t.TempDir()), convert.WithLogger(logrus.NewEntry(log))}
		if progress != nil {
			opts = append(opts, convert.WithProgress(progress))
		}
		return convert.New(reg, append(opts, extra...)...)
	}
	c, err := newConverter(nil)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(reg, c)
	if err != nil {
		t.Fatal(err)
	}
	w, err := watch.New(watch.Config{Registry: host, Remote: reg, NewConverter: newConverter, Policies: pol,
		StateDir: t.TempDir(), ReconcileInterval: time.Hour, Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(w.APIHandler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { api.Close(); cancel(); <-done })
	return api.URL
}

// rill create --no-wait prints the ID of the watcher's operation at once and says how to
// follow it; the operation creates and binds the artifact, with the options given.
func TestCreateNoWait(t *testing.T) {
	host := startRegistry(t, nil)
	ref := host + "/app:v1"
	pushRandom(t, ref, "amd64")
	api := startWatcher(t, host)
	flags := []string{"--plain-http", "--hosts-dir", t.TempDir(), "--docker-config", t.TempDir() + "/none.json"}

	code, out, errOut := rill(t, append([]string{"create", "--no-wait", "--watcher", api, "--chunk-size", "65536", ref}, flags...)...)
	id := strings.TrimSpace(out)
	if code != exitOK || id == "" || strings.Contains(id, "\n") || !strings.Contains(errOut, "rill operation show "+id+" --watcher "+api) {
		t.Fatalf("create --no-wait: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		code, out, errOut = rill(t, "operation", "show", id, "--watcher", api)
		if code != exitOK {
			t.Fatalf("operation show: exit %d: %s", code, errOut)
		}
		if strings.Contains(out, string(operation.Succeeded)) {
			break
		}
		if strings.Contains(out, string(operation.Failed)) || time.Now().After(deadline) {
			t.Fatalf("the operation did not succeed:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out, "trigger:  rill create") || !strings.Contains(out, "bound") || !strings.Contains(out, "options:  --chunk-size 65536") {
		t.Errorf("operation show:\n%s", out)
	}
	code, out, errOut = rill(t, append([]string{"show", ref}, flags...)...)
	if code != exitOK || !strings.Contains(out, "in use") {
		t.Fatalf("show after the operation: exit %d\n%s%s", code, out, errOut)
	}

	// Refused at once: the watcher's resources are its own; an image the watcher does not
	// serve; an image that does not exist.
	for _, c := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"create", "--no-wait", "--watcher", api, "--parallel", "2", ref}, exitUsage, "--parallel"},
		{[]string{"create", "--no-wait", "--watcher", api, "registry.example.com/app:v1"}, exitUsage, "this watcher serves " + host},
		{[]string{"create", "--no-wait", "--watcher", api, host + "/missing:v1"}, exitNotFound, "missing"},
	} {
		if code, out, errOut := rill(t, append(c.args, flags...)...); code != c.code || !strings.Contains(errOut, c.say) {
			t.Errorf("rill %v: exit %d, want %d saying %q\nstdout: %s\nstderr: %s", c.args, code, c.code, c.say, out, errOut)
		}
	}
}

// Without a watcher, --no-wait fails with its own exit code, naming the address it tried and
// what to do.
func TestCreateNoWaitWithoutWatcher(t *testing.T) {
	sock := "unix://" + filepath.Join(t.TempDir(), "watch.sock")
	code, out, errOut := rill(t, "create", "--no-wait", "--watcher", sock, "registry.example.com/app:v1")
	if code != exitUnavailable || !strings.Contains(errOut, "no watcher answers at "+sock) || !strings.Contains(errOut, "start 'rill watch'") ||
		!strings.Contains(errOut, "drop --no-wait") {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitUnavailable, out, errOut)
	}
}
