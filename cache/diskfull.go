package cache

import (
	"time"

	"github.com/sirupsen/logrus"
)

// diskFullLogEvery is how often at most a full disk is said (once when it starts, once when
// it ends, per period), however often writes meet it.
const diskFullLogEvery = time.Minute

// roomRetryEvery is how often at most a full disk is searched for unpinned data to evict once
// a search found none.
const roomRetryEvery = time.Second

// makeRoom evicts unpinned data (least recently used first, never files with an open handle
// nor pinned layers) after a write of n bytes met a full disk, and reports whether any was
// evicted, so that the write is worth trying again.
func (s *Store) makeRoom(n int64) bool {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	now := s.now()
	if s.roomless != 0 && now-s.roomless < int64(roomRetryEvery) {
		return false
	}
	s.mu.Lock()
	before := s.used
	target := s.used + s.reserved - n - 1<<20 // a little more than the write, for the next ones
	s.mu.Unlock()
	s.evict(target)
	s.mu.Lock()
	freed := before - s.used
	s.mu.Unlock()
	if freed <= 0 {
		s.roomless = now
		return false
	}
	s.roomless = 0
	s.log.WithField("freed", freed).Info("the cache's disk is full: evicted data of layers not mounted to make room")
	return true
}

// noteDiskFull records that a write met a full disk: the gauge, and a warning when it starts.
func (s *Store) noteDiskFull(err error) {
	now := s.now()
	if !s.fullSince.CompareAndSwap(0, now) {
		return
	}
	s.metrics.DiskFull.Set(1)
	s.fullMu.Lock()
	defer s.fullMu.Unlock()
	if s.fullWarned != 0 && now-s.fullWarned < int64(diskFullLogEvery) {
		return
	}
	s.fullWarned, s.fullSaid = now, true
	s.log.WithError(err).WithField("dir", s.dir).Warn("the cache's disk is full: streamed data is not kept (only the chunks of open files, in memory) and is fetched again when read again; free space on it, or lower cache.max_size below it")
}

// noteWriteOK records a write that succeeded: a full disk has space again.
func (s *Store) noteWriteOK() {
	since := s.fullSince.Load()
	if since == 0 || !s.fullSince.CompareAndSwap(since, 0) {
		return
	}
	s.metrics.DiskFull.Set(0)
	s.fullMu.Lock()
	defer s.fullMu.Unlock()
	if !s.fullSaid {
		return // its start was not said either
	}
	s.fullSaid = false
	s.log.WithFields(logrus.Fields{"dir": s.dir, "full_for": time.Duration(s.now() - since).Round(time.Second)}).Warn("the cache's disk has space again: streamed data is kept again")
}

// DiskFullSince returns when writes began to meet a full disk, or the zero time while they do
// not.
func (s *Store) DiskFullSince() time.Time {
	if since := s.fullSince.Load(); since != 0 {
		return time.Unix(0, since)
	}
	return time.Time{}
}
