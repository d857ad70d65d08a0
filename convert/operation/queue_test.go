package operation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func req(tag string) Request {
	return Request{Repository: "registry.example.com/team/app", Tag: tag, Digest: digest.FromString(tag), Trigger: "test"}
}

// run works q until the test ends.
func run(t *testing.T, q *Queue) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the queue did not stop within 10s")
		}
	})
}

// waitState waits (bounded) until the operation reaches state.
func waitState(t *testing.T, q *Queue, id string, state State) Operation {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		op, err := q.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if op.State == state {
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s is %s (%s), not %s, after 10s", id, op.State, op.Message, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func open(t *testing.T, dir string, work Work, opts ...Option) *Queue {
	t.Helper()
	q, err := Open(dir, work, append([]Option{WithRetry(3, time.Millisecond, 5*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// An operation goes NotStarted → Running (with progress) → Succeeded, and what it did is
// kept across a restart of the queue.
func TestOperationSucceedsAndPersists(t *testing.T) {
	dir := t.TempDir()
	release := make(chan struct{})
	q := open(t, dir, func(ctx context.Context, op Operation, progress func(Progress)) (string, error) {
		progress(Progress{Phase: "converting", Layers: 2, LayersDone: 1})
		<-release
		return "created it", nil
	})
	op, created, err := q.Submit(req("v1"))
	if err != nil || !created || op.State != NotStarted {
		t.Fatalf("Submit: %+v %v %v", op, created, err)
	}
	run(t, q)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := q.Get(op.ID)
		if got.State == Running && got.Progress != nil && got.Progress.LayersDone == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running progress: %+v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	done := waitState(t, q, op.ID, Succeeded)
	if done.Message != "created it" || done.Attempts != 1 || done.Finished.IsZero() || done.Progress != nil {
		t.Fatalf("succeeded operation: %+v", done)
	}
	again := open(t, dir, nil)
	if got, err := again.Get(op.ID); err != nil || got.State != Succeeded || got.Message != "created it" {
		t.Fatalf("after reopening: %+v (%v)", got, err)
	}
}

// A crash while an operation runs leaves it Running on disk; the next start runs it again
// and it completes.
func TestOperationResumedAfterCrash(t *testing.T) {
	dir := t.TempDir()
	started := make(chan struct{})
	q := open(t, dir, workUntilStopped(started))
	op, _, _ := q.Submit(req("v1"))
	run(t, q)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the operation did not start")
	}
	// The crash: the state directory as it is while the operation runs.
	crashed := t.TempDir()
	copyDir(t, dir, crashed)

	var runs atomic.Int32
	q2 := open(t, crashed, func(ctx context.Context, op Operation, _ func(Progress)) (string, error) {
		runs.Add(1)
		return "done after the restart", nil
	})
	if got, _ := q2.Get(op.ID); got.State != NotStarted || got.Attempts != 1 {
		t.Fatalf("after the crash the operation is %+v, want NotStarted after 1 attempt", got)
	}
	run(t, q2)
	done := waitState(t, q2, op.ID, Succeeded)
	if done.Attempts != 2 || runs.Load() != 1 {
		t.Fatalf("resumed operation: %+v, %d runs", done, runs.Load())
	}
}

// A graceful stop also leaves the interrupted operation to be resumed, not canceled.
func TestOperationInterruptedByShutdownIsResumed(t *testing.T) {
	dir := t.TempDir()
	started := make(chan struct{})
	q := open(t, dir, workUntilStopped(started))
	op, _, _ := q.Submit(req("v1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	q2 := open(t, dir, nil)
	if got, _ := q2.Get(op.ID); got.State != NotStarted {
		t.Fatalf("after a shutdown the operation is %s, want NotStarted", got.State)
	}
}

// Cancel stops a running operation and ends a queued one; an ended one cannot be canceled.
func TestOperationCancel(t *testing.T) {
	q := open(t, t.TempDir(), func(ctx context.Context, op Operation, _ func(Progress)) (string, error) {
		<-ctx.Done()
		return "", ctx.Err()
	}, WithWorkers(1))
	running, _, _ := q.Submit(req("v1"))
	queued, _, _ := q.Submit(req("v2"))
	run(t, q)
	waitState(t, q, running.ID, Running)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, id := range []string{queued.ID, running.ID} {
		op, err := q.Cancel(ctx, id)
		if err != nil || op.State != Canceled {
			t.Fatalf("Cancel(%s) = %+v, %v; want Canceled", id, op, err)
		}
	}
	if _, err := q.Cancel(ctx, running.ID); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("canceling a canceled operation: %v, want FailedPrecondition", err)
	}
	if _, err := q.Cancel(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("canceling an unknown operation: %v, want NotFound", err)
	}
	if got, _ := q.Get(queued.ID); got.Attempts != 0 {
		t.Fatalf("the queued operation ran %d times after it was canceled", got.Attempts)
	}
}

// Transient errors are retried with backoff, up to the attempt limit; permanent ones fail at
// once with their reason.
func TestOperationRetry(t *testing.T) {
	for _, tc := range []struct {
		name         string
		failures     int
		err          error
		want         State
		wantAttempts int
	}{
		{"transient then success", 2, fmt.Errorf("registry: %w", errdefs.ErrUnavailable), Succeeded, 3},
		{"transient until the limit", 10, fmt.Errorf("registry: %w", errdefs.ErrUnavailable), Failed, 3},
		{"permanent", 10, fmt.Errorf("the image is for arm64: %w", errdefs.ErrFailedPrecondition), Failed, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			var mu sync.Mutex
			var times []time.Time
			q := open(t, t.TempDir(), func(ctx context.Context, op Operation, _ func(Progress)) (string, error) {
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				if int(calls.Add(1)) <= tc.failures {
					return "", tc.err
				}
				return "ok", nil
			}, WithRetry(3, 20*time.Millisecond, 40*time.Millisecond))
			op, _, _ := q.Submit(req("v1"))
			run(t, q)
			done := waitState(t, q, op.ID, tc.want)
			if done.Attempts != tc.wantAttempts || int(calls.Load()) != tc.wantAttempts {
				t.Fatalf("%+v after %d calls; want %d attempts", done, calls.Load(), tc.wantAttempts)
			}
			if tc.want == Failed && done.Message == "" {
				t.Fatal("a failed operation says nothing about why")
			}
			mu.Lock()
			defer mu.Unlock()
			for i := 1; i < len(times); i++ {
				if gap := times[i].Sub(times[i-1]); gap < 15*time.Millisecond {
					t.Errorf("retry %d came %s after the failure, before the backoff", i, gap)
				}
			}
		})
	}
}

// The same tag and digest make one operation; two tags of one manifest never run at once.
func TestOperationNoDuplicateWork(t *testing.T) {
	work, most := countingWork(30 * time.Millisecond)
	q := open(t, t.TempDir(), work, WithWorkers(4))
	a, created, _ := q.Submit(req("v1"))
	if !created {
		t.Fatal("first submit not created")
	}
	if b, created, _ := q.Submit(req("v1")); created || b.ID != a.ID {
		t.Fatalf("a second submit of the same tag and digest made another operation: %s vs %s", b.ID, a.ID)
	}
	same := req("v1")
	same.Tag = "latest" // another tag of the same manifest
	c, _, _ := q.Submit(same)
	run(t, q)
	waitState(t, q, a.ID, Succeeded)
	waitState(t, q, c.ID, Succeeded)
	if most.Load() != 1 {
		t.Fatalf("%d operations on one manifest ran at once", most.Load())
	}
	if n := len(q.List()); n != 2 {
		t.Fatalf("%d operations, want 2", n)
	}
}

// A half-written file (a crash mid-write leaves only the temporary) and a corrupt one do not
// keep the queue from opening.
func TestOperationStoreSurvivesDebris(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, nil)
	op, _, _ := q.Submit(req("v1"))
	if err := os.WriteFile(filepath.Join(dir, ".x.123.tmp"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	q2 := open(t, dir, nil)
	if ops := q2.List(); len(ops) != 1 || ops[0].ID != op.ID {
		t.Fatalf("after debris: %+v", ops)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.json.corrupt")); err != nil {
		t.Errorf("the corrupt file was not set aside: %v", err)
	}
}

func TestSubmitRefusesIncompleteRequests(t *testing.T) {
	q := open(t, t.TempDir(), nil)
	for _, r := range []Request{{Tag: "v1", Digest: digest.FromString("x")}, {Repository: "r", Digest: digest.FromString("x")}, {Repository: "r", Tag: "v1", Digest: "sha256:nope"}} {
		if _, _, err := q.Submit(r); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Submit(%+v): %v, want InvalidArgument", r, err)
		}
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New("connection reset"), true},
		{fmt.Errorf("x: %w", errdefs.ErrUnavailable), true},
		{fmt.Errorf("x: %w", errdefs.ErrNotFound), false},
		{fmt.Errorf("x: %w", errdefs.ErrUnauthenticated), false},
		{fmt.Errorf("x: %w", errdefs.ErrDataLoss), false},
	} {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v", tc.err, got)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// An operator's request is an operation of its own each time (its choices differ from the
// webhook's), may name a digest without a tag, keeps its choices across a restart, and still
// never runs at once with another operation on the same manifest.
func TestManualOperations(t *testing.T) {
	dir := t.TempDir()
	work, most := countingWork(20 * time.Millisecond)
	q := open(t, dir, work, WithWorkers(4))
	auto, _, _ := q.Submit(req("v1"))
	manual := req("v1")
	manual.Trigger, manual.Create = "rill create", &CreateSpec{Force: true, Profile: []string{"usr/bin/x"}, Platforms: []string{"linux/arm64"}}
	a, created, err := q.Submit(manual)
	if err != nil || !created || a.ID == auto.ID {
		t.Fatalf("a manual request on a tag with an operation: %+v created=%v (%v)", a, created, err)
	}
	b, created, _ := q.Submit(manual)
	if !created || b.ID == a.ID {
		t.Fatalf("a second manual request was merged into the first: %s", b.ID)
	}
	if q.Has(manual) {
		t.Fatal("Has answers for a manual request")
	}
	byDigest := Request{Repository: manual.Repository, Digest: manual.Digest, Create: &CreateSpec{NoBind: true}}
	c, _, err := q.Submit(byDigest)
	if err != nil {
		t.Fatalf("a manual request by digest: %v", err)
	}
	if c.Image() != manual.Repository+"@"+manual.Digest.String() {
		t.Fatalf("Image() of a request by digest: %s", c.Image())
	}

	q2 := open(t, dir, work, WithWorkers(4)) // as after a restart
	got, err := q2.Get(a.ID)
	if err != nil || got.Create == nil || !got.Create.Force || len(got.Create.Profile) != 1 || got.Create.Platforms[0] != "linux/arm64" {
		t.Fatalf("after a restart, the manual operation is %+v (%v)", got, err)
	}
	if _, created, _ := q2.Submit(req("v1")); created {
		t.Fatal("after a restart, the webhook's request was queued again")
	}
	run(t, q2)
	for _, id := range []string{auto.ID, a.ID, b.ID, c.ID} {
		waitState(t, q2, id, Succeeded)
	}
	if most.Load() != 1 {
		t.Fatalf("%d operations on one manifest ran at once", most.Load())
	}
}

// countingWork is work that takes d and counts the most operations that ran at once.
func countingWork(d time.Duration) (func(context.Context, Operation, func(Progress)) (string, error), *atomic.Int32) {
	var running, most atomic.Int32
	return func(ctx context.Context, op Operation, _ func(Progress)) (string, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(d)
		return "ok", nil
	}, &most
}

// workUntilStopped is work that closes started and runs until its context ends.
func workUntilStopped(started chan struct{}) func(context.Context, Operation, func(Progress)) (string, error) {
	return func(ctx context.Context, op Operation, _ func(Progress)) (string, error) {
		close(started)
		<-ctx.Done()
		return "", ctx.Err()
	}
}
