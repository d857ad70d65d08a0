package cache

import (
	"fmt"
	"sort"
	"time"

	"github.com/sirupsen/logrus"
)

// reserve promises n more bytes on disk to a write, evicting least recently used files first
// if the budget requires it. It fails, wrapping ErrNoSpace, when not enough can be evicted.
// Every successful reserve is followed by commit or unreserve.
func (s *Store) reserve(n int64) error {
	if s.tryReserve(n) {
		return nil
	}
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	if s.tryReserve(n) { // another pass made room meanwhile
		return nil
	}
	// Evict a little below the budget (1/64 of it) so that a cache at its budget does not
	// scan its files for every write.
	s.evict(s.opts.budget - n - s.opts.budget/64)
	if s.tryReserve(n) {
		return nil
	}
	s.warnBudgetHeld(n)
	return fmt.Errorf("%w: %d bytes do not fit the budget of %d: the rest is held by pinned layers and open files, which are never evicted", ErrNoSpace, n, s.opts.budget)
}

// budgetWarnEvery is how often at most the budget being held by pinned data is logged.
const budgetWarnEvery = time.Minute

// warnBudgetHeld logs, at most once every budgetWarnEvery, that the data of pinned (mounted)
// layers and open files holds the whole budget: the data of a mounted layer is never evicted
// for another's, so new data is served from the network without being kept. Every write this
// refuses is counted in rill_cache_write_errors_total{reason="budget"}. s.evictMu is held.
func (s *Store) warnBudgetHeld(n int64) {
	now := s.now()
	if last := s.budgetWarned; last != 0 && now-last < int64(budgetWarnEvery) {
		return
	}
	s.budgetWarned = now
	s.mu.Lock()
	var pinned int64
	layers := 0
	for _, l := range s.layers {
		if l.pins > 0 {
			pinned += l.usage
			layers++
		}
	}
	used, reserved := s.used, s.reserved
	s.mu.Unlock()
	s.log.WithFields(logrus.Fields{
		"budget": s.opts.budget, "used": used, "reserved": reserved, "write": n,
		"pinned_bytes": pinned, "pinned_layers": layers,
	}).Warn("the cache budget is held by mounted layers, which are never evicted: new data is served from the network without being cached until a layer is unmounted (raise cache.max_size?)")
}

func (s *Store) tryReserve(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.budget > 0 && s.used+s.reserved+n > s.opts.budget {
		return false
	}
	s.reserved += n
	return true
}

func (s *Store) unreserve(n int64) {
	s.mu.Lock()
	s.reserved -= n
	s.mu.Unlock()
}

// candidate is a file that may be evicted.
type candidate struct {
	l        *layerState
	f        *fileState
	lastUsed int64
}

// evict deletes the least recently used files of unpinned layers that have no open handle
// until usage (with reservations) is at most target, or nothing is left to evict.
// s.evictMu is held.
func (s *Store) evict(target int64) {
	s.mu.Lock()
	layers := make([]*layerState, 0, len(s.layers))
	for _, l := range s.layers {
		if l.pins == 0 {
			layers = append(layers, l)
		}
	}
	s.mu.Unlock()
	var cands []candidate
	for _, l := range layers {
		l.mu.Lock()
		for _, f := range l.files {
			if f.refs == 0 {
				f.mu.RLock()
				used := f.usage
				f.mu.RUnlock()
				if used > 0 {
					cands = append(cands, candidate{l: l, f: f, lastUsed: f.lastUsed.Load()})
				}
			}
		}
		l.mu.Unlock()
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].lastUsed < cands[j].lastUsed })
	for _, c := range cands {
		s.mu.Lock()
		done := s.used+s.reserved <= target
		s.mu.Unlock()
		if done {
			return
		}
		c.l.mu.Lock()
		s.mu.Lock()
		ok := c.l.pins == 0 && !c.l.removed.Load()
		s.mu.Unlock()
		// Recheck under l.mu: the file may have been opened, or the layer pinned, meanwhile.
		if ok && c.l.files[c.f.key] == c.f && c.f.refs == 0 {
			freed := c.l.dropLocked(c.f)
			s.metrics.Evictions.Inc()
			s.metrics.EvictedBytes.Add(float64(freed))
			s.log.WithField("layer", c.l.d).WithField("key", c.f.key).WithField("bytes", freed).Debug("evicted")
		}
		c.l.mu.Unlock()
	}
}
