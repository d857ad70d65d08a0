package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Proxy is a TCP proxy on loopback in front of the registry that counts the bytes the registry
// sends: what a node downloads. Pulls through Proxy.Host() are measured; pulls through the
// registry's own address are not.
//
// It can also play a registry that fails: down (SetOutage), stalled (SetStall) or one whose
// blob range responses arrive corrupted (SetCorrupt).
type Proxy struct {
	lis    net.Listener
	target string
	down   atomic.Int64 // registry → client
	up     atomic.Int64 // client → registry
	mode   atomic.Int32 // a proxyMode
	// corrupted counts the blob range responses sent with flipped bytes.
	corrupted atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// proxyMode is how the proxy treats connections.
type proxyMode int32

const (
	modeForward proxyMode = iota // pass bytes through, counted
	modeOutage                   // close every connection at once: the registry is unreachable
	modeStall                    // accept, read and never answer: a registry that hangs
	modeCorrupt                  // forward, flipping the body bytes of blob range responses
)

// startProxy listens on a free loopback port and forwards every connection to target.
func startProxy(target string) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	p := &Proxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Host is the proxy's host:port.
func (p *Proxy) Host() string { return p.lis.Addr().String() }

// BytesDown is the number of bytes the registry has sent through the proxy.
func (p *Proxy) BytesDown() int64 { return p.down.Load() }

// SetOutage makes the registry unreachable through the proxy (every open connection is cut,
// new ones are closed at once) or reachable again.
func (p *Proxy) SetOutage(down bool) { p.setMode(modeOutage, down) }

// SetStall makes the registry hang: the proxy accepts connections and reads requests but never
// answers (every open connection is cut first, so that no request gets through on one). Off,
// the stalled connections are cut and the registry answers again.
func (p *Proxy) SetStall(stalled bool) { p.setMode(modeStall, stalled) }

// SetCorrupt makes every blob range response (206 to a GET of /v2/.../blobs/...) arrive with
// its body's bytes flipped, lengths and headers unchanged (multipart/byteranges keep their
// part headers and boundaries: only the parts' data is flipped). Every other response passes
// unchanged. Open connections are cut when the mode changes.
func (p *Proxy) SetCorrupt(corrupt bool) { p.setMode(modeCorrupt, corrupt) }

// Corrupted is the number of blob range responses sent with flipped bytes.
func (p *Proxy) Corrupted() int64 { return p.corrupted.Load() }

// setMode turns mode on (or off, back to forwarding) and cuts every open connection, so that
// what comes next is served in the new mode.
func (p *Proxy) setMode(mode proxyMode, on bool) {
	if !on {
		mode = modeForward
	}
	p.mode.Store(int32(mode))
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// ResetCounters sets the counters to zero.
func (p *Proxy) ResetCounters() { p.down.Store(0); p.up.Store(0) }

func (p *Proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.conns, c)
		return true
	}
	if p.conns == nil {
		return false // closed
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) serve(client net.Conn) {
	defer client.Close()
	mode := proxyMode(p.mode.Load())
	switch mode {
	case modeOutage:
		return
	case modeStall:
		if !p.track(client, true) {
			return
		}
		defer p.track(client, false)
		if proxyMode(p.mode.Load()) != modeStall {
			return // the stall ended between the accept and now
		}
		_, _ = io.Copy(io.Discard, client) // until the stall ends (setMode cuts it) or the client gives up
		return
	}
	upstream, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer upstream.Close()
	if !p.track(client, true) || !p.track(upstream, true) {
		return
	}
	defer p.track(client, false)
	defer p.track(upstream, false)
	if proxyMode(p.mode.Load()) != mode {
		return // the mode changed between the accept and now
	}
	if mode == modeCorrupt {
		p.serveHTTP(client, upstream)
		return
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, counter *atomic.Int64) {
		n, _ := io.Copy(dst, src)
		counter.Add(n)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	wg.Go(func() { pipe(upstream, client, &p.up) })
	wg.Go(func() { pipe(client, &countingConn{Conn: upstream, n: &p.down}, new(atomic.Int64)) })
	wg.Wait()
}

// serveHTTP forwards HTTP/1.1 requests from client to upstream one at a time and their
// responses back, flipping the body bytes of blob range responses while the proxy corrupts.
func (p *Proxy) serveHTTP(client, upstream net.Conn) {
	cr, ur := bufio.NewReader(client), bufio.NewReader(upstream)
	out := &countingWriter{w: client, n: &p.down}
	for {
		req, err := http.ReadRequest(cr)
		if err != nil {
			return
		}
		if err := req.Write(upstream); err != nil {
			return
		}
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return
		}
		if proxyMode(p.mode.Load()) == modeCorrupt && req.Method == http.MethodGet &&
			resp.StatusCode == http.StatusPartialContent && strings.Contains(req.URL.Path, "/blobs/") {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return
			}
			flipRangeBody(body, resp.Header.Get("Content-Type"))
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			p.corrupted.Add(1)
		}
		err = resp.Write(out)
		resp.Body.Close()
		if err != nil || req.Close || resp.Close {
			return
		}
	}
}

// flipRangeBody flips every bit of the data in a range response's body: all of it for a single
// range, the data of every part for multipart/byteranges (boundaries and part headers stay,
// so that the response still parses and only verification can tell).
func flipRangeBody(body []byte, contentType string) {
	flip := func(b []byte) {
		for i := range b {
			b[i] ^= 0xff
		}
	}
	boundary, ok := strings.CutPrefix(contentType, "multipart/byteranges; boundary=")
	if !ok {
		flip(body)
		return
	}
	delim := []byte("--" + strings.Trim(boundary, `"`))
	rest := body
	for {
		i := bytes.Index(rest, delim)
		if i < 0 {
			return
		}
		rest = rest[i+len(delim):]
		end := bytes.Index(rest, []byte("\r\n\r\n"))
		if end < 0 {
			return // the closing delimiter
		}
		n := partLength(string(rest[:end]))
		rest = rest[end+4:]
		if n < 0 || n > int64(len(rest)) {
			return
		}
		flip(rest[:n])
		rest = rest[n:]
	}
}

// partLength is the length of a multipart/byteranges part's data from its headers'
// Content-Range ("bytes FIRST-LAST/SIZE"), or -1.
func partLength(headers string) int64 {
	for _, line := range strings.Split(headers, "\r\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Content-Range") {
			continue
		}
		spec, ok := strings.CutPrefix(strings.TrimSpace(value), "bytes ")
		if !ok {
			return -1
		}
		spec, _, _ = strings.Cut(spec, "/")
		first, last, ok := strings.Cut(spec, "-")
		if !ok {
			return -1
		}
		f, err1 := strconv.ParseInt(first, 10, 64)
		l, err2 := strconv.ParseInt(last, 10, 64)
		if err1 != nil || err2 != nil || l < f {
			return -1
		}
		return l - f + 1
	}
	return -1
}

// countingConn counts what is read from the connection as it arrives (io.Copy's total comes
// only at the end of a connection that HTTP keeps alive).
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// countingWriter counts what is written through it.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// Close stops accepting and ends every open connection.
func (p *Proxy) Close() error {
	err := p.lis.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
