package snapshotter

import (
	"context"
	"errors"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/rillstream/rill/snapshotter/status"
)

// hostHealth remembers the registry hosts that failed a Prepare (no answer in time, refused
// or reset connections), so that the other layers of a pull do not wait for them again.
type hostHealth struct {
	unhealthyFor time.Duration
	metrics      *Metrics

	mu    sync.Mutex
	hosts map[string]*status.Host
	// broken[host] is closed when host is marked unhealthy: loads in flight for it stop.
	broken map[string]chan struct{}
}

func newHostHealth(unhealthyFor time.Duration, m *Metrics) *hostHealth {
	return &hostHealth{unhealthyFor: unhealthyFor, metrics: m, hosts: map[string]*status.Host{}, broken: map[string]chan struct{}{}}
}

// errHostUnhealthy ends the loads in flight for a host that another layer found unhealthy.
var errHostUnhealthy = errors.New("registry host found unhealthy by another layer of the pull")

// watch returns ctx ended (cause errHostUnhealthy) when host is marked unhealthy.
func (h *hostHealth) watch(ctx context.Context, host string) (context.Context, context.CancelFunc) {
	h.mu.Lock()
	ch, ok := h.broken[host]
	if !ok {
		ch = make(chan struct{})
		h.broken[host] = ch
	}
	h.mu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-ch:
			cancel(errHostUnhealthy)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// unhealthy returns the host's record while Prepares are to skip it.
func (h *hostHealth) unhealthy(host string) (status.Host, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.hosts[host]
	if !ok || time.Now().After(st.Until) {
		return status.Host{}, false
	}
	return *st, true
}

// failed marks host unhealthy after err, if err says the host did not answer.
func (h *hostHealth) failed(host string, err error) {
	if !hostFault(err) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	st, ok := h.hosts[host]
	if ok && now.Before(st.Until) {
		return // marked already (another layer of the same pull)
	}
	if !ok {
		st = &status.Host{Host: host, Since: now}
		h.hosts[host] = st
	}
	st.Until, st.LastError = now.Add(h.unhealthyFor), err.Error()
	if ch, ok := h.broken[host]; ok {
		close(ch)
		delete(h.broken, host)
	}
	h.metrics.unhealthyHosts.WithLabelValues(host).Set(1)
	log.L.WithError(err).WithField("host", host).WithField("for", h.unhealthyFor).
		Warn("registry host failed a Prepare: its layers are pulled in full without waiting for it, until it answers again")
}

// ok clears host after a healthy answer.
func (h *hostHealth) ok(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.hosts[host]
	if !ok {
		return
	}
	delete(h.hosts, host)
	h.metrics.unhealthyHosts.WithLabelValues(host).Set(0)
	log.L.WithField("host", host).WithField("unhealthy_for", time.Since(st.Since).Round(time.Second)).Info("registry host answers again: its layers stream again")
}

// status lists the unhealthy hosts by name.
func (h *hostHealth) status() []status.Host {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]status.Host, 0, len(h.hosts))
	for _, st := range h.hosts {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

// hostFault reports whether err says the registry host did not answer (in time, or at all),
// rather than answering something rill cannot stream.
func hostFault(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EHOSTUNREACH)
}

// registryHost is the registry host of an image reference, as pulled ("docker.io" when it
// names none).
func registryHost(ref string) string {
	host, _, ok := strings.Cut(ref, "/")
	if !ok || (!strings.ContainsAny(host, ".:") && host != "localhost") {
		return "docker.io"
	}
	return host
}
