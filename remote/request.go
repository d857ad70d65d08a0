package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

var errInvalidArgument = errdefs.ErrInvalidArgument

// request is one HTTP request to a registry endpoint or a discovered blob URL, rebuildable
// for retries.
type request struct {
	ep     *endpoint
	repo   string // the repository the request is for: credentials are per repository
	method string
	u      *url.URL
	header http.Header
	// body, when set, returns a fresh body for each attempt.
	body    func() io.Reader
	bodyLen int64
	op      string // metrics label
	// direct marks a URL outside the registry API (a redirect target): it is sent without
	// the registry's Authorization.
	direct bool
}

// redactURL is u without userinfo and query, which may carry credentials or signatures.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return c.String()
}

// cleanErr strips the URL (with its query) that net/http puts into transport errors.
func cleanErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryError marks an attempt's error as worth another attempt, after at least after.
type retryError struct {
	err    error
	after  time.Duration
	reason string
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

func retryable(reason string, after time.Duration, err error) error {
	return &retryError{err: err, after: after, reason: reason}
}

// withRetry runs attempt until it succeeds, fails for good, the attempts are used up, or ctx
// (bounded by the request timeout) ends. Between attempts it waits a capped exponential
// backoff with jitter, or what Retry-After asked for.
func (r *Registry) withRetry(ctx context.Context, host, op string, attempt func(ctx context.Context) error) error {
	return r.retryWithin(ctx, r.opts.requestTimeout, host, op, attempt)
}

// retryWithin is withRetry bounded by timeout instead of the request timeout.
func (r *Registry) retryWithin(ctx context.Context, timeout time.Duration, host, op string, attempt func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	attempts := 0
	for n := 0; n < r.opts.maxAttempts; n++ {
		attempts++
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		var re *retryError
		if !errors.As(err, &re) {
			if ctx.Err() != nil {
				return fmt.Errorf("%w (%s, %d attempts)", err, host, attempts)
			}
			return err
		}
		last = re.err
		if ctx.Err() != nil {
			break
		}
		if n == r.opts.maxAttempts-1 {
			return fmt.Errorf("%w (gave up after %d attempts to %s)", last, n+1, host)
		}
		wait := r.backoff(n)
		if re.after > 0 {
			if re.after > r.opts.maxRetryAfter {
				return fmt.Errorf("%w: registry asked to retry after %s, more than the allowed %s (%s, %d attempts)", last, re.after, r.opts.maxRetryAfter, host, n+1)
			}
			wait = re.after
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("%w: no time left for a retry within the request timeout (%s, %d attempts)", last, host, n+1)
		}
		r.metrics.retries.WithLabelValues(host, op, re.reason).Inc()
		log.G(ctx).WithFields(log.Fields{"host": host, "op": op, "reason": re.reason, "wait": wait, "attempt": n + 1}).WithError(last).Debug("retrying registry request")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
	if last == nil {
		return fmt.Errorf("%s: %w", host, ctx.Err())
	}
	return fmt.Errorf("%w (%w; %s, %d attempts)", last, ctx.Err(), host, attempts)
}

func (r *Registry) backoff(n int) time.Duration {
	d := r.opts.backoffBase << n
	if d > r.opts.backoffMax || d <= 0 {
		d = r.opts.backoffMax
	}
	// Jitter in [d/2, d): spreads the retries of many nodes hit by the same outage.
	half := int64(d / 2)
	if half <= 0 {
		return d
	}
	return time.Duration(half + rand.Int64N(half))
}

// send makes one attempt of req: it takes a slot of the host's scheduler at the priority
// ctx carries (released when the body is closed), authorizes, and on a 401 re-authenticates
// and sends once more. Transport errors come back retryable.
func (r *Registry) send(ctx context.Context, req *request) (*http.Response, error) {
	release, err := r.state(req.u.Host).sched.acquire(ctx, PriorityFrom(ctx))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.method, redactURL(req.u), err)
	}
	resp, err := r.sendAuthorized(ctx, req)
	if err != nil {
		release()
		return nil, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: release}
	return resp, nil
}

type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

func (r *Registry) sendAuthorized(ctx context.Context, req *request) (*http.Response, error) {
	var (
		auth    *authState
		refused []Credential // during this request: never tried twice
	)
	if !req.direct {
		auth = req.ep.authFor(req.repo)
	}
	for try := 0; ; try++ {
		hreq, err := r.build(ctx, req)
		if err != nil {
			return nil, err
		}
		var gen uint64
		if auth != nil {
			var tokenRefused *Credential
			if gen, tokenRefused, err = auth.authorize(ctx, hreq); err != nil {
				return nil, err
			}
			if tokenRefused != nil {
				refused = append(refused, *tokenRefused)
			}
		}
		sent := hreq.Header.Get("Authorization")
		start := time.Now()
		resp, err := req.ep.host.Client.Do(hreq)
		host := req.u.Host
		if err != nil {
			r.metrics.requests.WithLabelValues(host, req.op, "error").Inc()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s %s: %w", req.method, redactURL(req.u), ctx.Err())
			}
			return nil, retryable("connection", 0, fmt.Errorf("%s %s: %w", req.method, redactURL(req.u), cleanErr(err)))
		}
		r.metrics.requests.WithLabelValues(host, req.op, strconv.Itoa(resp.StatusCode)).Inc()
		r.metrics.latency.WithLabelValues(host, req.op).Observe(time.Since(start).Seconds())
		challenge := resp.StatusCode == http.StatusUnauthorized || (resp.StatusCode == http.StatusForbidden && sent != "")
		if !challenge || auth == nil || try == maxAuthTries-1 {
			return resp, nil
		}
		again, err := auth.challenged(ctx, gen, sent, resp, &refused)
		if err != nil {
			drain(resp)
			return nil, err
		}
		if !again {
			return resp, nil
		}
		drain(resp)
		log.G(ctx).WithFields(log.Fields{"host": host, "op": req.op, "status": resp.StatusCode}).Debug("registry asked for authentication; retrying")
	}
}

func (r *Registry) build(ctx context.Context, req *request) (*http.Request, error) {
	var body io.Reader
	if req.body != nil {
		body = req.body()
	}
	hreq, err := http.NewRequestWithContext(ctx, req.method, req.u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.method, redactURL(req.u), err)
	}
	if req.body != nil {
		hreq.ContentLength = req.bodyLen
		hreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(req.body()), nil }
	}
	for k, v := range req.ep.host.Header {
		hreq.Header[k] = append([]string(nil), v...)
	}
	for k, v := range req.header {
		hreq.Header[k] = append([]string(nil), v...)
	}
	hreq.Header.Set("User-Agent", r.opts.userAgent)
	return hreq, nil
}

// drain reads a little of an unwanted body, so the connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// statusError turns an unexpected response into an error of the right errdefs kind, retryable
// for 408, 429 and 5xx. It closes the body.
func statusError(req *request, resp *http.Response) error {
	msg := registryMessage(resp)
	drain(resp)
	base := fmt.Errorf("%s %s: %s%s", req.method, redactURL(req.u), resp.Status, msg)
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound:
		return fmt.Errorf("%w: %w", base, errdefs.ErrNotFound)
	case code == http.StatusUnauthorized:
		return fmt.Errorf("%w: %w", base, errdefs.ErrUnauthenticated)
	case code == http.StatusForbidden:
		return fmt.Errorf("%w: %w", base, errdefs.ErrPermissionDenied)
	case code == http.StatusTooManyRequests:
		return retryable("429", retryAfter(resp.Header.Get("Retry-After"), time.Now()), fmt.Errorf("%w: %w", base, errdefs.ErrResourceExhausted))
	case code == http.StatusRequestTimeout || code >= 500:
		return retryable(strconv.Itoa(code), retryAfter(resp.Header.Get("Retry-After"), time.Now()), fmt.Errorf("%w: %w", base, errdefs.ErrUnavailable))
	case code == http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%w: %w", base, errdefs.ErrOutOfRange)
	default:
		return fmt.Errorf("%w: %w", base, errdefs.ErrUnknown)
	}
}

// registryMessage extracts the first error code and message of a registry error body.
func registryMessage(resp *http.Response) string {
	if !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		return ""
	}
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<10)).Decode(&body); err != nil || len(body.Errors) == 0 {
		return ""
	}
	m := body.Errors[0].Code + " " + body.Errors[0].Message
	if len(m) > 200 {
		m = m[:200] + "..."
	}
	return " (" + strings.TrimSpace(m) + ")"
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when absent or bad.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
