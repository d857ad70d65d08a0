package watch

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/sirupsen/logrus"
)

// DefaultAPIAddress is where the watcher's local API listens unless told otherwise.
const DefaultAPIAddress = "unix:///run/rill/watch.sock"

// WebhookHandler receives the registry's notifications: it answers 200 once the pushes it
// carries are queued (or found not to need work), 400 for a body that is no envelope, 401
// without the configured token. Reading a policy or manifest failing is logged, not
// answered with an error: the registry would resend the whole envelope, and the next
// reconciliation covers it anyway.
func (w *Watcher) WebhookHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			rw.Header().Set("Allow", http.MethodPost)
			http.Error(rw, "POST notifications here", http.StatusMethodNotAllowed)
			return
		}
		if w.cfg.WebhookToken != "" {
			got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
			if subtle.ConstantTimeCompare([]byte(got), []byte(w.cfg.WebhookToken)) != 1 {
				http.Error(rw, "missing or wrong token", http.StatusUnauthorized)
				return
			}
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != EventsMediaType && mt != EventsMediaTypeV2 && mt != "application/json" {
			http.Error(rw, "want "+EventsMediaType+" or "+EventsMediaTypeV2, http.StatusUnsupportedMediaType)
			return
		}
		env, err := ParseEnvelope(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		for _, p := range Pushes(env, w.cfg.Policies.Repository()) {
			if _, err := w.consider(ctx, p, "webhook", false); err != nil {
				w.log.WithError(err).WithFields(logrus.Fields{"repository": p.Repository, "tag": p.Tag, "digest": p.Digest}).
					Warn("could not act on a push event; the next reconciliation will")
			}
		}
		rw.WriteHeader(http.StatusOK)
	})
}

// APIHandler serves the local API (see the package documentation).
func (w *Watcher) APIHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/operations", func(rw http.ResponseWriter, r *http.Request) {
		writeJSON(rw, http.StatusOK, w.queue.List())
	})
	mux.HandleFunc("POST /v1/operations", func(rw http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxCreateRequest))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(rw, fmt.Errorf("a create request (JSON, {\"image\": ..., \"create\": {...}}): %w: %w", err, errdefs.ErrInvalidArgument))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		op, err := w.SubmitCreate(ctx, req)
		if err != nil {
			writeError(rw, err)
			return
		}
		writeJSON(rw, http.StatusAccepted, op)
	})
	mux.HandleFunc("GET /v1/operations/{id}", func(rw http.ResponseWriter, r *http.Request) {
		op, err := w.queue.Get(r.PathValue("id"))
		if err != nil {
			writeError(rw, err)
			return
		}
		writeJSON(rw, http.StatusOK, op)
	})
	mux.HandleFunc("POST /v1/operations/{id}/cancel", func(rw http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		op, err := w.queue.Cancel(ctx, r.PathValue("id"))
		if err != nil {
			writeError(rw, err)
			return
		}
		writeJSON(rw, http.StatusOK, op)
	})
	mux.HandleFunc("POST /v1/reconcile", func(rw http.ResponseWriter, r *http.Request) {
		n, err := w.Reconcile(r.Context())
		if err != nil {
			writeError(rw, err)
			return
		}
		writeJSON(rw, http.StatusOK, map[string]int{"queued": n})
	})
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, r *http.Request) {
		writeJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}

// maxCreateRequest bounds the body of a create request (a prefetch profile of many paths).
const maxCreateRequest = 16 << 20

// apiError is the body of an API error.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(v)
}

func writeError(rw http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errdefs.IsNotFound(err):
		code = http.StatusNotFound
	case errdefs.IsFailedPrecondition(err), errdefs.IsConflict(err):
		code = http.StatusConflict
	case errdefs.IsInvalidArgument(err):
		code = http.StatusBadRequest
	case errdefs.IsUnauthorized(err), errdefs.IsPermissionDenied(err):
		code = http.StatusForbidden
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	}
	writeJSON(rw, code, apiError{Error: err.Error()})
}

// Listen opens a listener for addr: "unix:///path" (a socket only its owner may open; a
// stale socket file is replaced), "http://host:port" or "host:port".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, err
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process serves this socket: %w", path, errdefs.ErrAlreadyExists)
		}
		_ = os.Remove(path)
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return net.Listen("tcp", strings.TrimPrefix(addr, "http://"))
}
