package operation

import (
	"errors"
	"time"

	"github.com/containerd/errdefs"
	"github.com/sirupsen/logrus"
)

// Option changes one setting of a Queue.
type Option func(*options)

type options struct {
	workers     int
	maxAttempts int
	backoff     func(attempt int) time.Duration
	retryable   func(error) bool
	keep        int
	log         *logrus.Entry
	now         func() time.Time
}

func defaults() options {
	return options{
		workers:     2,
		maxAttempts: 5,
		backoff:     backoff(2*time.Second, 2*time.Minute),
		retryable:   Retryable,
		keep:        1000,
		log:         logrus.NewEntry(logrus.StandardLogger()),
		now:         time.Now,
	}
}

func (o options) validate() error {
	if o.workers < 1 {
		return errors.New("operation: at least one worker is needed")
	}
	if o.maxAttempts < 1 {
		return errors.New("operation: at least one attempt is needed")
	}
	if o.keep < 0 {
		return errors.New("operation: the number of finished operations kept cannot be negative")
	}
	return nil
}

// WithWorkers sets how many operations run at once (default 2).
func WithWorkers(n int) Option { return func(o *options) { o.workers = n } }

// WithRetry sets the attempts per operation (the first included) and the backoff between
// them: base, doubled per failed attempt up to max, with jitter (defaults 5, 2s, 2m).
func WithRetry(attempts int, base, max time.Duration) Option {
	return func(o *options) { o.maxAttempts, o.backoff = attempts, backoff(base, max) }
}

// WithRetryable sets which errors are worth another attempt (default Retryable).
func WithRetryable(f func(error) bool) Option { return func(o *options) { o.retryable = f } }

// WithKeep sets how many finished operations are remembered (default 1000); older ones are
// forgotten, oldest first.
func WithKeep(n int) Option { return func(o *options) { o.keep = n } }

// WithLogger sets where the queue logs.
func WithLogger(l *logrus.Entry) Option { return func(o *options) { o.log = l } }

// WithClock sets the queue's clock (for tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Retryable is the default test of whether an error is transient: every error is, except
// those whose errdefs kind says that trying again cannot help (bad input, missing image or
// rights, unsupported content, corrupt data, a conflict).
func Retryable(err error) bool {
	switch {
	case errdefs.IsInvalidArgument(err), errdefs.IsNotFound(err), errdefs.IsFailedPrecondition(err),
		errdefs.IsNotImplemented(err), errdefs.IsDataLoss(err), errdefs.IsUnauthorized(err),
		errdefs.IsPermissionDenied(err), errdefs.IsConflict(err), errdefs.IsAlreadyExists(err),
		errdefs.IsCanceled(err):
		return false
	}
	return true
}
