// Package faultproxy is an HTTP proxy in front of a registry that injects the faults real
// networks and registries produce: dropped connections, delays, bursts of 503 and 429 with
// Retry-After, wrong Content-Range, truncated or corrupted bodies, multi-range requests refused (200 full
// body or 400), redirects to storage URLs that expire, and a token server whose tokens
// expire. It records every request it sees.
package faultproxy

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Kind is a kind of fault.
type Kind int

const (
	// Drop closes the connection without an answer.
	Drop Kind = iota
	// Status answers Code with Retry-After (when set) and no body.
	Status
	// ShiftRange asks the backend for the range shifted by one byte: an honest answer for
	// bytes other than those asked for.
	ShiftRange
	// Truncate sends half the body announced and closes the connection.
	Truncate
	// MultiAs200 answers multi-range requests with the full body (200).
	MultiAs200
	// MultiAs400 answers multi-range requests with 400.
	MultiAs400
	// Delay waits Delay before forwarding.
	Delay
	// Corrupt flips the bits of the first byte of the body: the right length, the wrong
	// content.
	Corrupt
)

// Fault is one fault, applied to the next Times matching requests (every one when Times < 0).
// By default it matches range GETs of blobs (through the registry API or the storage URL).
type Fault struct {
	Kind       Kind
	Times      int
	Code       int
	RetryAfter string
	Delay      time.Duration
	Match      func(*http.Request) bool
}

// Record is a request the proxy saw.
type Record struct {
	Method string
	Path   string
	Query  url.Values
	Range  string
	Auth   bool
}

// Proxy is a fault-injecting reverse proxy on a loopback port.
type Proxy struct {
	Host    string // host:port of the proxy
	backend *url.URL
	tr      *http.Transport

	mu       sync.Mutex
	faults   []*Fault
	records  []Record
	latency  time.Duration
	redirect bool
	urlGen   int
	auth     *tokenAuth
	inflight int
	maxIn    int
}

type tokenAuth struct {
	basic      bool // Basic auth on the registry API itself, no token server
	plain      bool // challenges never carry error="invalid_token"
	user, pass string
	expiresIn  int
	tokens     map[string]bool
	n          int
	issued     int
	sawCreds   bool
}

// New starts a proxy in front of the registry at backend (host:port).
func New(t testing.TB, backend string) *Proxy {
	t.Helper()
	p := &Proxy{
		backend: &url.URL{Scheme: "http", Host: backend},
		tr:      &http.Transport{MaxIdleConnsPerHost: 64},
	}
	s := httptest.NewServer(p)
	t.Cleanup(func() {
		s.Close()
		p.tr.CloseIdleConnections()
	})
	p.Host = strings.TrimPrefix(s.URL, "http://")
	return p
}

// Add queues faults.
func (p *Proxy) Add(fs ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range fs {
		f := fs[i]
		p.faults = append(p.faults, &f)
	}
}

// Pending returns how many faults are still to be applied (a fault with Times > 0 is gone once
// it has been applied that many times).
func (p *Proxy) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.faults)
}

// Clear removes all faults.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = nil
}

// SetLatency delays every request by d (a round trip on a slow link).
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// RedirectBlobs makes blob GETs redirect (307) to a storage URL of the proxy that is valid
// until ExpireRedirects.
func (p *Proxy) RedirectBlobs() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.redirect = true
}

// ExpireRedirects makes every storage URL handed out so far answer 403.
func (p *Proxy) ExpireRedirects() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.urlGen++
}

// RequireToken makes the registry API demand bearer tokens from the proxy's token server,
// which wants user and pass (when user is set) and reports tokens valid for expiresIn seconds.
func (p *Proxy) RequireToken(user, pass string, expiresIn int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.auth = &tokenAuth{user: user, pass: pass, expiresIn: expiresIn, tokens: map[string]bool{}}
}

// RequireBasic makes the registry API demand HTTP Basic credentials user and pass.
func (p *Proxy) RequireBasic(user, pass string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.auth = &tokenAuth{basic: true, user: user, pass: pass}
}

// PlainChallenges makes 401 answers omit error="invalid_token" even when a token was sent,
// as some registries do.
func (p *Proxy) PlainChallenges() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.auth.plain = true
}

// ExpireTokens makes every token issued so far invalid.
func (p *Proxy) ExpireTokens() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auth != nil {
		p.auth.tokens = map[string]bool{}
	}
}

// TokensIssued counts the tokens the token server handed out.
func (p *Proxy) TokensIssued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auth == nil {
		return 0
	}
	return p.auth.issued
}

// Records returns the requests seen so far.
func (p *Proxy) Records() []Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Record(nil), p.records...)
}

// MaxInFlight is the most requests the proxy served at the same time since the last Reset.
func (p *Proxy) MaxInFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxIn
}

// Reset forgets the requests seen so far.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.records = nil
	p.maxIn = p.inflight
}

// Count counts the requests seen whose method is method (any when empty) and whose path
// contains sub.
func (p *Proxy) Count(method, sub string) int {
	n := 0
	for _, r := range p.Records() {
		if (method == "" || r.Method == method) && strings.Contains(r.Path, sub) {
			n++
		}
	}
	return n
}

func isBlobRead(r *http.Request) bool {
	return r.Method == http.MethodGet && r.Header.Get("Range") != "" &&
		(strings.Contains(r.URL.Path, "/blobs/sha256:") || strings.HasPrefix(r.URL.Path, "/storage/"))
}

// IsMultiRange reports whether r asks for several ranges.
func IsMultiRange(r *http.Request) bool { return strings.Contains(r.Header.Get("Range"), ",") }

func (p *Proxy) take(r *http.Request) *Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, f := range p.faults {
		match := f.Match
		if match == nil {
			match = isBlobRead
		}
		if (f.Kind == MultiAs200 || f.Kind == MultiAs400) && !IsMultiRange(r) {
			continue
		}
		if !match(r) {
			continue
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				p.faults = append(p.faults[:i:i], p.faults[i+1:]...)
			}
		}
		return f
	}
	return nil
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.records = append(p.records, Record{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Range: r.Header.Get("Range"), Auth: r.Header.Get("Authorization") != ""})
	latency, redirect, gen, auth := p.latency, p.redirect, p.urlGen, p.auth != nil
	p.inflight++
	p.maxIn = max(p.maxIn, p.inflight)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inflight--
		p.mu.Unlock()
	}()
	if latency > 0 {
		time.Sleep(latency)
	}
	if r.URL.Path == "/token" {
		p.serveToken(w, r)
		return
	}
	storage := strings.HasPrefix(r.URL.Path, "/storage/")
	if storage {
		if r.URL.Query().Get("gen") != strconv.Itoa(gen) {
			http.Error(w, "Request has expired", http.StatusForbidden)
			return
		}
	} else if auth && strings.HasPrefix(r.URL.Path, "/v2/") && !p.authorized(r) {
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		if i := strings.Index(repo, "/blobs/"); i >= 0 {
			repo = repo[:i]
		} else if i := strings.Index(repo, "/manifests/"); i >= 0 {
			repo = repo[:i]
		} else if i := strings.Index(repo, "/referrers/"); i >= 0 {
			repo = repo[:i]
		}
		p.mu.Lock()
		basic, plain := p.auth.basic, p.auth.plain
		p.mu.Unlock()
		challenge := fmt.Sprintf(`Bearer realm="http://%s/token",service="faultproxy",scope="repository:%s:pull"`, r.Host, repo)
		if r.Header.Get("Authorization") != "" && !plain {
			challenge += `,error="invalid_token"`
		}
		if basic {
			challenge = `Basic realm="faultproxy"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return
	}
	if redirect && !storage && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		loc := fmt.Sprintf("http://%s/storage%s?gen=%d&X-Signature=sig%d", r.Host, strings.TrimPrefix(r.URL.Path, "/v2"), gen, gen)
		http.Redirect(w, r, loc, http.StatusTemporaryRedirect)
		return
	}
	f := p.take(r)
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.backend.Scheme, p.backend.Host
	out.Host = p.backend.Host
	out.Header.Del("Authorization")
	if storage {
		out.URL.Path = "/v2" + strings.TrimPrefix(r.URL.Path, "/storage")
		out.URL.RawQuery = ""
	}
	if f != nil {
		switch f.Kind {
		case Drop:
			hj, ok := w.(http.Hijacker)
			if !ok {
				panic("faultproxy: cannot hijack")
			}
			c, _, err := hj.Hijack()
			if err == nil {
				c.Close()
			}
			return
		case Status:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			w.WriteHeader(f.Code)
			return
		case MultiAs400:
			w.WriteHeader(http.StatusBadRequest)
			return
		case MultiAs200:
			out.Header.Del("Range")
		case ShiftRange:
			out.Header.Set("Range", shift(r.Header.Get("Range")))
		case Delay:
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		}
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	if loc := resp.Header.Get("Location"); loc != "" {
		w.Header().Set("Location", strings.Replace(loc, p.backend.Host, r.Host, 1))
	}
	w.WriteHeader(resp.StatusCode)
	if f != nil && f.Kind == Truncate && resp.ContentLength > 1 {
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
		return
	}
	if f != nil && f.Kind == Corrupt {
		var first [1]byte
		if n, _ := io.ReadFull(resp.Body, first[:]); n == 1 {
			first[0] ^= 0xff
			w.Write(first[:])
		}
	}
	io.Copy(w, resp.Body)
}

// shift moves every range of a Range header one byte up.
func shift(h string) string {
	spec := strings.TrimPrefix(h, "bytes=")
	var parts []string
	for _, s := range strings.Split(spec, ",") {
		a, b, _ := strings.Cut(s, "-")
		x, _ := strconv.ParseInt(a, 10, 64)
		y, _ := strconv.ParseInt(b, 10, 64)
		if x > 0 {
			x, y = x-1, y-1
		} else {
			x, y = x+1, y+1
		}
		parts = append(parts, fmt.Sprintf("%d-%d", x, y))
	}
	return "bytes=" + strings.Join(parts, ",")
}

func (p *Proxy) authorized(r *http.Request) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auth.basic {
		u, pw, ok := r.BasicAuth()
		return ok && u == p.auth.user && pw == p.auth.pass
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && p.auth.tokens[tok]
}

func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.auth
	if a == nil {
		http.NotFound(w, r)
		return
	}
	var user, pass string
	var ok bool
	post := r.Method == http.MethodPost
	if post {
		_ = r.ParseForm()
		user, pass, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), r.PostForm.Get("username") != ""
	} else {
		user, pass, ok = r.BasicAuth()
	}
	if a.user != "" {
		if !ok || user != a.user || pass != a.pass {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		a.sawCreds = true
	}
	a.n++
	a.issued++
	tok := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("token-%d", a.n)))
	a.tokens[tok] = true
	body := map[string]any{"token": tok, "access_token": tok}
	if a.expiresIn > 0 {
		body["expires_in"] = a.expiresIn
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(body)
}
