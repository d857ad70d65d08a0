package snapshotter

import (
	"sync"
	"time"

	"github.com/rillstream/rill/snapshotter/status"
)

// maxDecisions bounds the record of recent decisions: the oldest go first.
const maxDecisions = 512

// decisionLog keeps the latest decisions in a ring; its zero value is empty and ready.
type decisionLog struct {
	mu   sync.Mutex
	ring []status.Decision
	next int // where the next decision goes once the ring is full
}

func (l *decisionLog) add(d status.Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < maxDecisions {
		l.ring = append(l.ring, d)
		return
	}
	l.ring[l.next] = d
	l.next = (l.next + 1) % maxDecisions
}

// list returns the decisions, oldest first.
func (l *decisionLog) list() []status.Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]status.Decision, 0, len(l.ring))
	out = append(out, l.ring[l.next:]...)
	return append(out, l.ring[:l.next]...)
}

// Decisions returns the latest decisions (at most 512), oldest first: why each recently
// prepared image layer streams or was pulled in full.
func (s *Snapshotter) Decisions() []status.Decision { return s.decisions.list() }

func (s *Snapshotter) logDecision(l LayerLabels, result, reason string, err error) {
	d := status.Decision{Time: time.Now().UTC(), ImageRef: l.ImageRef, Manifest: l.Manifest, Layer: l.Layer, Result: result, Reason: reason}
	if err != nil {
		d.Error = err.Error()
	}
	s.decisions.add(d)
}
