package link

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes the emulated link.
type Config struct {
	// BitsPerSecond caps each direction of the link (shared by all connections); 0: no cap.
	BitsPerSecond float64
	// RTT is the round-trip time: each direction delays data by RTT/2. A new connection also
	// waits one RTT before its first byte travels (the TCP handshake).
	RTT time.Duration
}

// chunkSize is the most a direction reads from one connection before pacing it: small enough
// that connections interleave finely (16 KiB is 1.3 ms at 100 Mbit/s), large enough to keep
// the proxy's CPU low.
const chunkSize = 16 << 10

// Link is a running emulated link: it listens on a loopback port and forwards every connection
// to its target.
type Link struct {
	cfg    Config
	target string
	lis    net.Listener
	up     *direction // client → target
	down   *direction // target → client

	mu    sync.Mutex
	conns map[net.Conn]struct{} // nil once closed
	wg    sync.WaitGroup
}

// direction is one way of the link: its pacer and its byte counter.
type direction struct {
	pacer pacer
	delay time.Duration
	bytes atomic.Int64
}

// Start listens on a free loopback port and forwards connections to target (host:port).
func Start(target string, cfg Config) (*Link, error) {
	if cfg.BitsPerSecond < 0 || cfg.RTT < 0 {
		return nil, fmt.Errorf("link: negative rate (%v) or RTT (%v)", cfg.BitsPerSecond, cfg.RTT)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("link: listen: %w", err)
	}
	newDir := func() *direction {
		return &direction{pacer: pacer{bytesPerSec: cfg.BitsPerSecond / 8}, delay: cfg.RTT / 2}
	}
	l := &Link{cfg: cfg, target: target, lis: lis, up: newDir(), down: newDir(), conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.accept)
	return l, nil
}

// Addr is the link's host:port: connect there to reach the target through the link.
func (l *Link) Addr() string { return l.lis.Addr().String() }

// Config returns the link's configuration.
func (l *Link) Config() Config { return l.cfg }

// BytesDown is the number of bytes the target has sent through the link (delivered to clients).
func (l *Link) BytesDown() int64 { return l.down.bytes.Load() }

// BytesUp is the number of bytes clients have sent through the link (delivered to the target).
func (l *Link) BytesUp() int64 { return l.up.bytes.Load() }

// Close stops accepting, cuts every open connection and waits for the forwarding to end.
func (l *Link) Close() error {
	err := l.lis.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.conns = nil
	l.mu.Unlock()
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (l *Link) accept() {
	for {
		c, err := l.lis.Accept()
		if err != nil {
			return
		}
		l.wg.Go(func() { l.serve(c, time.Now()) })
	}
}

// track registers (or forgets) an open connection; it reports false once the link is closed.
func (l *Link) track(c net.Conn, add bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	if add {
		l.conns[c] = struct{}{}
	} else {
		delete(l.conns, c)
	}
	return true
}

func (l *Link) serve(client net.Conn, accepted time.Time) {
	defer client.Close()
	if !l.track(client, true) {
		return
	}
	defer l.track(client, false)
	upstream, err := net.Dial("tcp", l.target)
	if err != nil {
		return
	}
	defer upstream.Close()
	if !l.track(upstream, true) {
		return
	}
	defer l.track(upstream, false)
	// The handshake: nothing travels before one round trip has passed.
	handshake := accepted.Add(l.cfg.RTT)
	var wg sync.WaitGroup
	wg.Go(func() { l.up.forward(upstream, client, handshake) })
	wg.Go(func() { l.down.forward(client, upstream, handshake) })
	wg.Wait()
}

// packet is a chunk in flight: it reaches the other side at arrive.
type packet struct {
	data   []byte
	arrive time.Time
}

// forward carries src's bytes to dst through this direction until src ends, then half-closes
// dst (or closes both when dst fails). No byte leaves before notBefore.
func (d *direction) forward(dst, src net.Conn, notBefore time.Time) {
	// Packets travelling for the one-way delay; the reader is paced, so this holds at most
	// rate × delay bytes (plus a chunk), far below the capacity on any link we emulate.
	inFlight := make(chan packet, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed := false
		for p := range inFlight {
			if failed {
				continue // drain, so that the reader never blocks
			}
			if wait := time.Until(p.arrive); wait > 0 {
				time.Sleep(wait)
			}
			n, err := dst.Write(p.data)
			d.bytes.Add(int64(n))
			if err != nil {
				failed = true
				src.Close()
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok && !failed {
			_ = tc.CloseWrite()
		}
	}()
	for {
		buf := make([]byte, chunkSize)
		n, err := src.Read(buf)
		if n > 0 {
			now := time.Now()
			if now.Before(notBefore) {
				now = notBefore
			}
			start, sent := d.pacer.reserve(now, n)
			inFlight <- packet{data: buf[:n], arrive: sent.Add(d.delay)}
			// Read the next chunk only once the link starts sending this one: every
			// connection keeps at most two chunks queued at the bottleneck, so connections
			// share it in turn and a new request does not wait behind a deep queue. The
			// rest stays in the sender's socket buffers, and TCP pushes back on the sender.
			if wait := time.Until(start); wait > 0 {
				time.Sleep(wait)
			}
		}
		if err != nil {
			break
		}
	}
	close(inFlight)
	<-done
}
