package remote

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rillstream/rill/internal/regtest"
	"github.com/rillstream/rill/remote/internal/faultproxy"
)

func acquireNow(t *testing.T, s *scheduler, p Priority) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	release, err := s.acquire(ctx, p)
	if err != nil {
		t.Fatalf("%s slot: %v", p, err)
	}
	return release
}

// waitQueued waits until n requests of priority p are waiting.
func waitQueued(t *testing.T, s *scheduler, p Priority, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		got := s.waiting[p].Len()
		s.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s requests waiting, want %d", got, p, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkIdle fails unless nothing is in flight or waiting: every slot came back.
func checkIdle(t *testing.T, s *scheduler) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := PriorityOnDemand; p < numPriorities; p++ {
		if s.inFlight[p] != 0 || s.waiting[p].Len() != 0 {
			t.Errorf("%s: %d in flight, %d waiting after everyone is done", p, s.inFlight[p], s.waiting[p].Len())
		}
		if g := testutil.ToFloat64(s.metrics.inFlight.WithLabelValues(s.host, p.String())); g != 0 {
			t.Errorf("%s: in-flight gauge %v after everyone is done", p, g)
		}
	}
}

// A freed bulk slot goes to waiting prefetch requests before background ones, and within a
// priority to the oldest.
func TestSchedulerAdmitsHighestPriorityFirstThenInOrder(t *testing.T) {
	s := newScheduler("host", 4, 1, NewMetrics())
	hold := acquireNow(t, s, PriorityBackground)

	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	enqueue := func(name string, p Priority, queuedBefore int) {
		wg.Go(func() {
			release, err := s.acquire(context.Background(), p)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			release()
		})
		waitQueued(t, s, p, queuedBefore+1)
	}
	enqueue("background-1", PriorityBackground, 0)
	enqueue("prefetch-1", PriorityPrefetch, 0)
	enqueue("background-2", PriorityBackground, 1)
	enqueue("prefetch-2", PriorityPrefetch, 1)
	enqueue("background-3", PriorityBackground, 2)
	hold()
	wg.Wait()
	want := []string{"prefetch-1", "prefetch-2", "background-1", "background-2", "background-3"}
	if len(order) != len(want) {
		t.Fatalf("admitted %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("admitted %v, want %v", order, want)
		}
	}
	checkIdle(t, s)
}

// A new bulk request does not overtake one of its priority (or a prefetch request) that is
// waiting already, even if it asks just as a slot frees.
func TestSchedulerNewcomersQueueBehindWaiters(t *testing.T) {
	s := newScheduler("host", 1, 1, NewMetrics())
	hold := acquireNow(t, s, PriorityPrefetch)
	done := make(chan struct{})
	go func() {
		defer close(done)
		release, err := s.acquire(context.Background(), PriorityPrefetch)
		if err == nil {
			release()
		}
	}()
	waitQueued(t, s, PriorityPrefetch, 1)
	s.mu.Lock()
	if !s.ahead(PriorityBackground) || !s.ahead(PriorityPrefetch) || s.ahead(PriorityOnDemand) {
		t.Error("a waiting prefetch request must be ahead of new bulk requests, and of no on-demand one")
	}
	s.mu.Unlock()
	hold()
	<-done
	checkIdle(t, s)
}

// With every bulk slot held and more bulk work waiting, on-demand requests start at once, up
// to their own limit; past it they wait for each other only, in order.
func TestSchedulerOnDemandNeverWaitsForBulkWork(t *testing.T) {
	s := newScheduler("host", 2, 2, NewMetrics())
	bulk := []func(){acquireNow(t, s, PriorityBackground), acquireNow(t, s, PriorityPrefetch)}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if release, err := s.acquire(context.Background(), PriorityBackground); err == nil {
				release()
			}
		})
	}
	waitQueued(t, s, PriorityBackground, 3)

	began := time.Now()
	a := acquireNow(t, s, PriorityOnDemand)
	b := acquireNow(t, s, PriorityOnDemand)
	if d := time.Since(began); d > time.Second {
		t.Fatalf("on-demand slots took %s with bulk work holding its own", d)
	}
	// The third on-demand request waits for an on-demand slot, not for bulk work to end.
	got := make(chan struct{})
	released := make(chan struct{})
	go func() {
		defer close(released)
		release := acquireNow(t, s, PriorityOnDemand)
		close(got)
		release()
	}()
	waitQueued(t, s, PriorityOnDemand, 1)
	a()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a freed on-demand slot did not go to the waiting on-demand request")
	}
	b()
	for _, release := range bulk {
		release()
	}
	wg.Wait()
	<-released // its release must be counted before the scheduler is checked idle
	checkIdle(t, s)
}

// A request that stops waiting leaves the queue; the slot it would have had goes to the next.
func TestSchedulerCancelWhileWaiting(t *testing.T) {
	s := newScheduler("host", 1, 1, NewMetrics())
	hold := acquireNow(t, s, PriorityBackground)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := s.acquire(ctx, PriorityBackground)
		errc <- err
	}()
	waitQueued(t, s, PriorityBackground, 1)
	next := make(chan func(), 1)
	go func() {
		release, err := s.acquire(context.Background(), PriorityBackground)
		if err != nil {
			t.Error(err)
		}
		next <- release
	}()
	waitQueued(t, s, PriorityBackground, 2)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v, want context.Canceled", err)
	}
	waitQueued(t, s, PriorityBackground, 1)
	hold()
	select {
	case release := <-next:
		release()
	case <-time.After(5 * time.Second):
		t.Fatal("the slot did not go to the request behind the cancelled one")
	}
	// A deadline that passes while waiting ends the wait too.
	hold = acquireNow(t, s, PriorityOnDemand)
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	if _, err := s.acquire(dctx, PriorityOnDemand); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its deadline: %v, want DeadlineExceeded", err)
	}
	hold()
	checkIdle(t, s)
}

// Many requests of every priority, some cancelled while waiting (some as their slot comes),
// releases called twice: limits hold throughout, and every slot comes back.
func TestSchedulerNoLeakedSlotsUnderChurn(t *testing.T) {
	s := newScheduler("host", 3, 2, NewMetrics())
	var (
		mu        sync.Mutex
		violation string
		wg        sync.WaitGroup
	)
	check := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.inFlight[PriorityOnDemand] > 3 || s.inFlight[PriorityPrefetch]+s.inFlight[PriorityBackground] > 2 {
			mu.Lock()
			violation = "a limit was exceeded"
			mu.Unlock()
		}
	}
	for i := range 300 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(i), 7))
			p := Priority(rnd.IntN(int(numPriorities)))
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rnd.IntN(3000))*time.Microsecond)
			defer cancel()
			release, err := s.acquire(ctx, p)
			if err != nil {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Error(err)
				}
				return
			}
			check()
			time.Sleep(time.Duration(rnd.IntN(500)) * time.Microsecond)
			release()
			release() // idempotent
		})
	}
	wg.Wait()
	if violation != "" {
		t.Fatal(violation)
	}
	checkIdle(t, s)
}

func TestPriorityFromContext(t *testing.T) {
	ctx := context.Background()
	if p := PriorityFrom(ctx); p != PriorityOnDemand {
		t.Fatalf("default priority %s, want on_demand", p)
	}
	if p := PriorityFrom(WithPriority(ctx, PriorityBackground)); p != PriorityBackground {
		t.Fatalf("priority %s, want background", p)
	}
	if p := PriorityFrom(WithPriority(ctx, Priority(42))); p != PriorityOnDemand {
		t.Fatalf("unknown priority read as %s, want on_demand", p)
	}
}

// Through a Registry: with bulk work holding every bulk slot on a slow registry, an on-demand
// read starts at once, and the waits are counted.
func TestBlobOnDemandReadOvertakesBulkWork(t *testing.T) {
	m := NewMetrics()
	f := newBlobFixture(t, regtest.InProcess(t, true), WithMaxConcurrency(2), WithBulkConcurrency(1), WithMetrics(m))
	br := f.reader(t)
	if err := f.check(t, br, Range{0, 10}); err != nil { // discover the host
		t.Fatal(err)
	}
	f.proxy.Add(faultproxy.Fault{Kind: faultproxy.Delay, Delay: 2 * time.Second, Times: 1})
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			_, _ = br.ReadAtContext(WithPriority(ctx, PriorityBackground), make([]byte, 100), int64(i+1)*100<<10)
		})
	}
	// One background request holds the bulk slot (delayed), three wait for it. The delay must
	// have gone to that request, not to the read below.
	waitQueued(t, f.reg.state(f.proxy.Host).sched, PriorityBackground, 3)
	for deadline := time.Now().Add(5 * time.Second); f.proxy.Pending() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the background request holding the bulk slot never reached the registry")
		}
	}
	timed(t, time.Second, func() {
		if err := f.check(t, br, Range{900 << 10, 4096}); err != nil {
			t.Fatal(err)
		}
	})
	cancel()
	wg.Wait()
	if n := testutil.CollectAndCount(m.slotWait); n < 2 {
		t.Fatalf("slot waits observed for %d host/priority pairs, want on_demand and background", n)
	}
}
