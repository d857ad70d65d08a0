// Package operation is the watcher's durable work queue: each conversion it decides on is an
// Operation with an ID, queued, worked by a bounded pool, retried with capped exponential
// backoff on transient errors, cancellable, and visible in its states (NotStarted, Running
// with progress, Succeeded, Failed with the reason, Canceled).
//
// Every change of state is written to its own file under the state directory before it is
// visible (write to a temporary file, fsync, rename, fsync the directory), so a crash leaves
// each operation either before or after a transition, never half-written. An operation found
// Running when the queue is opened was interrupted by a crash: it is queued again and re-run
// from the start, which is safe because conversion is idempotent (artifacts that exist are
// kept; the binding is pushed only if the tag still names what was converted).
//
// There is one operation per image tag and manifest digest: submitting the same pair again
// returns the existing operation, whatever its state. Operations on the same manifest (two
// tags naming it) never run at once, so a manifest is converted once and the other tag is
// only bound.
//
// An operator's request (rill create --no-wait, Request.Create set) is an operation of its
// own every time it is submitted: it carries the create's choices (--force, --no-bind, the
// profile), which another operation on the same tag does not. It still never runs at once
// with another operation on the same manifest.
package operation
