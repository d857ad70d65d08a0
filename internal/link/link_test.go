package link

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// server answers each connection: it reads a request of reqLen bytes, then sends back the
// bytes its respond function returns for it, and closes.
func server(t *testing.T, reqLen int, respond func(req []byte) []byte) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req := make([]byte, reqLen)
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				_, _ = c.Write(respond(req))
			})
		}
	})
	return lis.Addr().String()
}

func startLink(t *testing.T, target string, cfg Config) *Link {
	t.Helper()
	l, err := Start(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing the link: %v", err)
		}
	})
	return l
}

// exchange connects through the link, sends req and reads the whole answer.
func exchange(t *testing.T, addr string, req []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return nil
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		t.Error(err)
		return nil
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Error(err)
	}
	return resp
}

// A request and its answer through a 40 ms link take at least the handshake plus one round
// trip, and no more than a little beyond it (the link adds no hidden delays).
func TestDelayLowerBound(t *testing.T) {
	const rtt = 40 * time.Millisecond
	target := server(t, 5, func(req []byte) []byte { return req })
	l := startLink(t, target, Config{RTT: rtt})
	for range 3 {
		began := time.Now()
		if got := exchange(t, l.Addr(), []byte("hello")); string(got) != "hello" {
			t.Fatalf("echo through the link: got %q", got)
		}
		elapsed := time.Since(began)
		if elapsed < 2*rtt {
			t.Errorf("a new connection's request and answer took %s, less than handshake + round trip (%s)", elapsed, 2*rtt)
		}
		if elapsed > 2*rtt+60*time.Millisecond {
			t.Errorf("a new connection's request and answer took %s, far more than %s", elapsed, 2*rtt)
		}
	}
}

// Two connections downloading at once share the link's rate: together they get about the cap,
// not twice it, and each gets about half.
func TestSharedBudget(t *testing.T) {
	const (
		rate = 40e6 // bits per second
		size = 2 << 20
	)
	payload := make([]byte, size)
	rand.Read(payload)
	target := server(t, 1, func([]byte) []byte { return payload })
	l := startLink(t, target, Config{BitsPerSecond: rate, RTT: 2 * time.Millisecond})

	one := time.Now()
	exchange(t, l.Addr(), []byte{1})
	alone := time.Since(one)

	var wg sync.WaitGroup
	durations := make([]time.Duration, 2)
	began := time.Now()
	for i := range durations {
		wg.Go(func() {
			start := time.Now()
			if got := exchange(t, l.Addr(), []byte{1}); !bytes.Equal(got, payload) {
				t.Errorf("connection %d: got %d bytes, not the payload", i, len(got))
			}
			durations[i] = time.Since(start)
		})
	}
	wg.Wait()
	both := time.Since(began)

	ideal := time.Duration(float64(size*8) / rate * float64(time.Second))
	t.Logf("one connection: %s (ideal %s); two at once: %s (%v each)", alone, ideal, both, durations)
	// The lower bounds are what the pacer guarantees; the upper ones only catch a link far
	// slower than its rate, with room for a loaded CI machine (tests of other packages run
	// alongside).
	if alone < ideal || alone > ideal*2 {
		t.Errorf("one connection took %s for %d bytes; at %.0f bit/s it should take %s to %s", alone, size, rate, ideal, ideal*2)
	}
	if both < 2*ideal*95/100 {
		t.Errorf("two parallel connections finished in %s: faster than the shared cap allows (%s): is the budget per connection?", both, 2*ideal)
	}
	if both > 2*ideal*2 {
		t.Errorf("two parallel connections took %s, far beyond the cap's %s", both, 2*ideal)
	}
	for i, d := range durations {
		if d < 2*ideal*8/10 {
			t.Errorf("connection %d finished in %s: the other could not have had its share (both need %s)", i, d, 2*ideal)
		}
	}
}

// The counters hold exactly the bytes carried each way, on every connection.
func TestExactByteCounts(t *testing.T) {
	answers := map[byte]int{1: 0, 2: 1, 3: 100_000, 4: 3 << 20}
	target := server(t, 7, func(req []byte) []byte { return make([]byte, answers[req[0]]) })
	l := startLink(t, target, Config{RTT: time.Millisecond})
	var want int64
	var wg sync.WaitGroup
	for k, n := range answers {
		want += int64(n)
		wg.Go(func() {
			if got := exchange(t, l.Addr(), []byte{k, 0, 0, 0, 0, 0, 0}); len(got) != n {
				t.Errorf("answer %d: got %d bytes, want %d", k, len(got), n)
			}
		})
	}
	wg.Wait()
	if got := l.BytesDown(); got != want {
		t.Errorf("BytesDown = %d, want %d", got, want)
	}
	if got, want := l.BytesUp(), int64(7*len(answers)); got != want {
		t.Errorf("BytesUp = %d, want %d", got, want)
	}
}

func TestPacerSerialisesInArrivalOrder(t *testing.T) {
	p := pacer{bytesPerSec: 1000}
	t0 := time.Unix(1000, 0)
	cases := []struct {
		at         time.Duration
		n          int
		start, end time.Duration
	}{
		{0, 100, 0, 100 * time.Millisecond},                                          // idle link: at once
		{10 * time.Millisecond, 100, 100 * time.Millisecond, 200 * time.Millisecond}, // queued behind
		{time.Second, 50, time.Second, time.Second + 50*time.Millisecond},            // idle again
	}
	for i, c := range cases {
		start, end := p.reserve(t0.Add(c.at), c.n)
		if start != t0.Add(c.start) || end != t0.Add(c.end) {
			t.Errorf("reservation %d: [%s, %s], want [%s, %s]", i, start.Sub(t0), end.Sub(t0), c.start, c.end)
		}
	}
}
