package snapshotter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/artifact"
)

// ProfileSender sends a profile the node recorded to the fleet's watcher (rill watch).
type ProfileSender interface {
	SendProfile(ctx context.Context, r artifact.ProfileReport) error
}

// RefusedError is a report the watcher refused for what it is (4xx but 401, 403, 408, 429):
// it is not sent again.
type RefusedError struct {
	Status int
	Msg    string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the watcher refused the profile: %d %s", e.Status, e.Msg)
}

// reporter sends finished profiles, one at a time per artifact. A nil reporter sends nothing.
type reporter struct {
	sender  ProfileSender
	node    string
	dir     string // root/profiles/reported
	backoff func(attempt int) time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inflight map[digest.Digest]bool
}

func newReporter(root string, sender ProfileSender, node string) *reporter {
	if sender == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &reporter{
		sender: sender, node: node, dir: filepath.Join(root, "profiles", "reported"),
		backoff: func(attempt int) time.Duration { return min(time.Second<<min(attempt, 10), 10*time.Minute) },
		ctx:     ctx, cancel: cancel, inflight: map[digest.Digest]bool{},
	}
}

// sentRecord is what root/profiles/reported/<algorithm>-<hex>.json says of an artifact.
type sentRecord struct {
	Image   string    `json:"image"`
	Sent    time.Time `json:"sent"`
	Refused string    `json:"refused,omitempty"`
}

func (r *reporter) marker(d digest.Digest) string {
	return filepath.Join(r.dir, string(d.Algorithm())+"-"+d.Encoded()+".json")
}

// send starts sending rep unless its artifact was reported or is being reported.
func (r *reporter) send(rep artifact.ProfileReport) {
	if r == nil || rep.Artifact.Validate() != nil {
		return
	}
	entry := log.L.WithField("artifact", rep.Artifact.String()).WithField("image", rep.Image)
	if _, err := os.Stat(r.marker(rep.Artifact)); err == nil {
		entry.Debug("the profile of this artifact was reported already")
		return
	}
	r.mu.Lock()
	if r.inflight[rep.Artifact] || r.ctx.Err() != nil {
		r.mu.Unlock()
		return
	}
	r.inflight[rep.Artifact] = true
	r.wg.Add(1)
	r.mu.Unlock()
	rep.Node = r.node
	rep.Paths = fitReport(rep)
	go func() {
		defer r.wg.Done()
		defer func() { r.mu.Lock(); delete(r.inflight, rep.Artifact); r.mu.Unlock() }()
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
			err := r.sender.SendProfile(ctx, rep)
			cancel()
			var refused *RefusedError
			switch {
			case err == nil:
				r.remember(rep, "")
				entry.WithField("paths", len(rep.Paths)).Info("prefetch profile reported to the fleet's watcher")
				return
			case errors.As(err, &refused):
				r.remember(rep, refused.Error())
				entry.WithError(err).Warn("the fleet's watcher refused the recorded profile; not sent again")
				return
			case r.ctx.Err() != nil:
				return
			}
			wait := r.backoff(attempt)
			entry.WithError(err).WithField("retry_in", wait.String()).Warn("cannot report the recorded profile to the fleet's watcher")
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

func (r *reporter) remember(rep artifact.ProfileReport, refused string) {
	data, _ := json.Marshal(sentRecord{Image: rep.Image, Sent: time.Now().UTC(), Refused: refused})
	err := os.MkdirAll(r.dir, 0o700)
	if err == nil {
		err = writeFileAtomic(r.marker(rep.Artifact), data)
	}
	if err != nil {
		log.L.WithError(err).Warn("cannot remember that the profile was reported; it may be sent again after a restart")
	}
}

// stop gives up the reports being sent and waits for their goroutines.
func (r *reporter) stop() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.cancel()
	r.mu.Unlock()
	r.wg.Wait()
}

// fitReport returns the paths of rep cut to what the watcher accepts: artifact.MaxProfilePaths
// paths in a body of at most artifact.MaxProfileReportSize (the last paths matter least).
func fitReport(rep artifact.ProfileReport) []string {
	paths := rep.Paths
	if len(paths) > artifact.MaxProfilePaths {
		paths = paths[:artifact.MaxProfilePaths]
	}
	for len(paths) > 1 {
		rep.Paths = paths
		b, err := json.Marshal(rep)
		if err != nil || len(b) <= artifact.MaxProfileReportSize-1024 {
			break
		}
		paths = paths[:len(paths)*3/4]
	}
	return paths
}

// HTTPProfileSender sends reports to a rill watch over HTTP.
type HTTPProfileSender struct {
	// URL is the watcher's base URL (its --listen address: "http://watch.example:8900").
	URL string
	// TokenFile holds the bearer token (rill watch --profile-token-file); it is read at
	// every send, so a rotated token needs no restart.
	TokenFile string
	// Client sends the requests (default: one with a 30 s timeout).
	Client *http.Client
}

// SendProfile POSTs r to the watcher's profile endpoint.
func (h *HTTPProfileSender) SendProfile(ctx context.Context, r artifact.ProfileReport) error {
	tok, err := os.ReadFile(h.TokenFile)
	if err != nil {
		return fmt.Errorf("profile report token: %w", err)
	}
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(h.URL, "/")+artifact.ProfileReportPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch s := resp.StatusCode; {
	case s == http.StatusAccepted || s == http.StatusOK:
		return nil
	case s >= 400 && s < 500 && s != http.StatusUnauthorized && s != http.StatusForbidden && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests:
		return &RefusedError{Status: s, Msg: strings.TrimSpace(string(msg))}
	default:
		return fmt.Errorf("the watcher answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
}
