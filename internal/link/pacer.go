package link

import (
	"sync"
	"time"
)

// pacer serialises the chunks of one direction of the link at a fixed rate: the link is busy
// sending one chunk at a time, in the order they ask, whichever connection they come from.
// It is a token bucket with no burst: a chunk of n bytes occupies the link for n/rate.
type pacer struct {
	bytesPerSec float64 // 0: unlimited

	mu   sync.Mutex
	free time.Time // when the link finishes sending what it has accepted so far
}

// reserve books the link for n bytes arriving now and returns when the link starts sending
// them and when their last byte has left the bottleneck.
func (p *pacer) reserve(now time.Time, n int) (start, end time.Time) {
	if p.bytesPerSec <= 0 {
		return now, now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start = p.free
	if start.Before(now) {
		start = now
	}
	p.free = start.Add(time.Duration(float64(n) / p.bytesPerSec * float64(time.Second)))
	return start, p.free
}
