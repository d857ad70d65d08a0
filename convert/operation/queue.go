package operation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/sirupsen/logrus"
)

// Work does one operation. It reports progress through progress (cheap; call it often) and
// returns what it did, in words, or why it failed. It must stop when ctx is done.
type Work func(ctx context.Context, op Operation, progress func(Progress)) (message string, err error)

// errCanceled is the cause of an operation's context when an operator cancels it.
var errCanceled = errors.New("canceled by the operator")

// Queue holds the operations, persists them under its directory and works them.
type Queue struct {
	store *store
	work  Work
	o     options

	mu      sync.Mutex
	ops     map[string]*Operation
	byKey   map[string]string                  // Request.key() → ID
	running map[string]context.CancelCauseFunc // ID → cancel of the running work
	serials map[string]bool                    // Request.serial() of running operations
	wake    chan struct{}
}

// Open loads the operations persisted in dir (created if missing). Operations that were
// Running — the process stopped while they ran — are queued again.
func Open(dir string, work Work, opts ...Option) (*Queue, error) {
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	st, err := openStore(dir)
	if err != nil {
		return nil, err
	}
	q := &Queue{store: st, work: work, o: o, ops: map[string]*Operation{}, byKey: map[string]string{},
		running: map[string]context.CancelCauseFunc{}, serials: map[string]bool{}, wake: make(chan struct{}, 1)}
	loaded, err := st.load(o.log)
	if err != nil {
		return nil, err
	}
	for _, op := range loaded {
		if op.State == Running {
			op.State, op.Progress, op.NextAttempt = NotStarted, nil, time.Time{}
			op.Message = "resumed: the watcher stopped while it ran"
			op.Updated = o.now()
			if err := st.save(op); err != nil {
				return nil, err
			}
			o.log.WithFields(logrus.Fields{"operation": op.ID, "image": op.Image(), "digest": op.Digest}).Info("operation resumed after a restart")
		}
		q.ops[op.ID] = op
		if k := op.key(); k != "" {
			q.byKey[k] = op.ID
		}
	}
	return q, nil
}

// Submit queues the request, or returns the operation that exists for the same tag and
// digest (created is then false). A manual request (Create set) is always queued anew, and
// needs no tag.
func (q *Queue) Submit(req Request) (op Operation, created bool, err error) {
	if req.Repository == "" || (req.Tag == "" && !req.Manual()) || req.Digest.Validate() != nil {
		return Operation{}, false, fmt.Errorf("operation for %s@%s: a repository, a tag and a valid digest are required: %w", req.Image(), req.Digest, errdefs.ErrInvalidArgument)
	}
	if req.Create != nil {
		c := *req.Create
		c.Profile, c.Platforms = slices.Clone(c.Profile), slices.Clone(c.Platforms)
		req.Create = &c
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	key := req.key()
	if id, ok := q.byKey[key]; ok && key != "" {
		return q.copy(q.ops[id]), false, nil
	}
	now := q.o.now()
	n := &Operation{ID: newID(), Request: req, State: NotStarted, Created: now, Updated: now}
	if err := q.store.save(n); err != nil {
		return Operation{}, false, err
	}
	q.ops[n.ID] = n
	if key != "" {
		q.byKey[key] = n.ID
	}
	q.o.log.WithFields(logrus.Fields{"operation": n.ID, "image": req.Image(), "digest": req.Digest, "trigger": req.Trigger}).Info("operation queued")
	q.notify()
	return q.copy(n), true, nil
}

// Has reports whether an operation exists for the request's tag and digest (never for a
// manual request).
func (q *Queue) Has(req Request) bool {
	key := req.key()
	if key == "" {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.byKey[key]
	return ok
}

// Get returns the operation id; NotFound when there is none.
func (q *Queue) Get(id string) (Operation, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	op, ok := q.ops[id]
	if !ok {
		return Operation{}, fmt.Errorf("operation %q: %w", id, errdefs.ErrNotFound)
	}
	return q.copy(op), nil
}

// List returns every operation, oldest first.
func (q *Queue) List() []Operation {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Operation, 0, len(q.ops))
	for _, op := range q.ops {
		out = append(out, q.copy(op))
	}
	slices.SortFunc(out, func(a, b Operation) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Cancel cancels the operation id: at once if it has not started, else by stopping its work,
// which Cancel waits for (bounded by ctx). FailedPrecondition when it has already ended.
func (q *Queue) Cancel(ctx context.Context, id string) (Operation, error) {
	q.mu.Lock()
	op, ok := q.ops[id]
	if !ok {
		q.mu.Unlock()
		return Operation{}, fmt.Errorf("operation %q: %w", id, errdefs.ErrNotFound)
	}
	switch op.State {
	case NotStarted:
		now := q.o.now()
		op.State, op.Message, op.Finished, op.Updated, op.NextAttempt = Canceled, errCanceled.Error(), now, now, time.Time{}
		err := q.store.save(op)
		c := q.copy(op)
		q.mu.Unlock()
		q.o.log.WithFields(logrus.Fields{"operation": id, "image": op.Image()}).Info("operation canceled")
		return c, err
	case Running:
		q.running[id](errCanceled)
		q.mu.Unlock()
	default:
		c := q.copy(op)
		q.mu.Unlock()
		return c, fmt.Errorf("operation %s has already ended (%s): %w", id, c.State, errdefs.ErrFailedPrecondition)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := q.Get(id)
		if err != nil || c.State != Running {
			return c, err
		}
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-tick.C:
		}
	}
}

// Run works the queue with the configured number of workers until ctx is done, then waits
// for the running work to stop. Operations interrupted that way are queued again, to be
// resumed at the next start.
func (q *Queue) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range q.o.workers {
		wg.Go(func() { q.worker(ctx) })
	}
	wg.Wait()
}

func (q *Queue) worker(ctx context.Context) {
	for ctx.Err() == nil {
		op, opCtx, cancel, wait := q.claim(ctx)
		if op != nil {
			q.runOne(ctx, opCtx, *op)
			cancel(nil)
			continue
		}
		var timer <-chan time.Time
		var t *time.Timer
		if wait > 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// claim marks the next due operation Running and returns it with its context; or, when none
// is due, how long until one is (0: none scheduled).
func (q *Queue) claim(ctx context.Context) (*Operation, context.Context, context.CancelCauseFunc, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.o.now()
	var next *Operation
	var wait time.Duration
	for _, op := range q.ops {
		if op.State != NotStarted || q.serials[op.serial()] {
			continue
		}
		if d := op.NextAttempt.Sub(now); d > 0 {
			if wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		if next == nil || op.Created.Before(next.Created) || (op.Created.Equal(next.Created) && op.ID < next.ID) {
			next = op
		}
	}
	if next == nil {
		return nil, nil, nil, wait
	}
	next.State, next.Attempts, next.Started, next.Updated = Running, next.Attempts+1, now, now
	next.NextAttempt, next.Progress = time.Time{}, &Progress{}
	if err := q.store.save(next); err != nil {
		q.o.log.WithError(err).WithField("operation", next.ID).Warn("could not persist the operation's start; running it anyway")
	}
	opCtx, cancel := context.WithCancelCause(ctx)
	q.running[next.ID] = cancel
	q.serials[next.serial()] = true
	q.notify() // another worker may take the next one
	c := q.copy(next)
	return &c, opCtx, cancel, 0
}

// runOne works op and records the outcome.
func (q *Queue) runOne(root, ctx context.Context, op Operation) {
	log := q.o.log.WithFields(logrus.Fields{"operation": op.ID, "image": op.Image(), "digest": op.Digest, "attempt": op.Attempts})
	log.Info("operation started")
	msg, err := q.safeWork(ctx, op)

	q.mu.Lock()
	defer q.mu.Unlock()
	cur := q.ops[op.ID]
	delete(q.running, op.ID)
	delete(q.serials, op.serial())
	defer q.notify()
	now := q.o.now()
	cur.Progress, cur.Updated = nil, now
	cause := context.Cause(ctx)
	switch {
	case err == nil:
		cur.State, cur.Message, cur.Finished = Succeeded, msg, now
		log.WithField("result", msg).Info("operation succeeded")
	case errors.Is(cause, errCanceled):
		cur.State, cur.Message, cur.Finished = Canceled, errCanceled.Error(), now
		log.Info("operation canceled")
	case root.Err() != nil:
		cur.State, cur.Message = NotStarted, "interrupted by a shutdown; resumed at the next start"
		log.Info("operation interrupted by a shutdown")
	case q.o.retryable(err) && cur.Attempts < q.o.maxAttempts:
		d := q.o.backoff(cur.Attempts)
		cur.State, cur.NextAttempt = NotStarted, now.Add(d)
		cur.Message = fmt.Sprintf("attempt %d of %d failed: %v; retrying in %s", cur.Attempts, q.o.maxAttempts, err, d.Round(time.Millisecond))
		log.WithError(err).WithField("retry_in", d).Warn("operation attempt failed; retrying")
	default:
		cur.State, cur.Finished = Failed, now
		cur.Message = err.Error()
		if cur.Attempts > 1 {
			cur.Message = fmt.Sprintf("%v (after %d attempts)", err, cur.Attempts)
		}
		log.WithError(err).Error("operation failed")
	}
	if err := q.store.save(cur); err != nil {
		log.WithError(err).Warn("could not persist the operation's outcome")
	}
	q.prune()
}

// safeWork runs the work, turning a panic into an error (one bad image must not stop the
// watcher).
func (q *Queue) safeWork(ctx context.Context, op Operation) (msg string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error: %v: %w", r, errdefs.ErrInternal)
		}
	}()
	return q.work(ctx, op, func(p Progress) {
		q.mu.Lock()
		defer q.mu.Unlock()
		if cur := q.ops[op.ID]; cur != nil && cur.State == Running {
			cur.Progress = &p
		}
	})
}

// prune forgets the oldest final operations beyond the configured number. Call with q.mu held.
func (q *Queue) prune() {
	var final []*Operation
	for _, op := range q.ops {
		if op.State.Final() {
			final = append(final, op)
		}
	}
	if len(final) <= q.o.keep {
		return
	}
	slices.SortFunc(final, func(a, b *Operation) int { return a.Finished.Compare(b.Finished) })
	for _, op := range final[:len(final)-q.o.keep] {
		if err := q.store.remove(op.ID); err != nil {
			q.o.log.WithError(err).WithField("operation", op.ID).Warn("could not remove a finished operation")
			continue
		}
		delete(q.ops, op.ID)
		if k := op.key(); k != "" && q.byKey[k] == op.ID {
			delete(q.byKey, k)
		}
	}
}

func (q *Queue) notify() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// copy returns a copy of op that shares nothing mutable with the queue (a CreateSpec is never
// changed once submitted).
func (q *Queue) copy(op *Operation) Operation {
	c := *op
	if op.Progress != nil {
		p := *op.Progress
		c.Progress = &p
	}
	return c
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// backoff returns the delay before the retry that follows attempt (from 1): base doubled per
// attempt, capped at max, with ±20% jitter.
func backoff(base, max time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		d := base
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		d = min(d, max)
		return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
	}
}
