package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy is a TCP proxy on loopback in front of the registry that counts the bytes the registry
// sends: what a node downloads. Pulls through Proxy.Host() are measured; pulls through the
// registry's own address are not.
type Proxy struct {
	lis    net.Listener
	target string
	down   atomic.Int64 // registry → client
	up     atomic.Int64 // client → registry
	// outage makes the proxy drop every connection: the registry is unreachable.
	outage atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

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
func (p *Proxy) SetOutage(down bool) {
	p.outage.Store(down)
	if !down {
		return
	}
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
	if p.outage.Load() {
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
