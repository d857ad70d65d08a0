package fs

import (
	"sync"
	"time"
)

// Access is a file's first open after the mount.
type Access struct {
	Path string
	At   time.Time
}

// recorder keeps the order of first opens during a window after the mount: what the image
// reads at start, in first-access order — its prefetch profile.
type recorder struct {
	until time.Time
	mu    sync.Mutex
	seen  map[string]bool
	order []Access
}

// maxRecorded bounds a recording (a start-up that opens more files than this is not one).
const maxRecorded = 100_000

func newRecorder(window time.Duration) *recorder {
	return &recorder{until: time.Now().Add(window), seen: map[string]bool{}}
}

func (r *recorder) opened(path string) {
	now := time.Now()
	if now.After(r.until) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[path] || len(r.order) >= maxRecorded {
		return
	}
	r.seen[path] = true
	r.order = append(r.order, Access{Path: path, At: now})
}

// Recorded returns the files first opened during the recording window, in order, and whether
// the window is over. Without recording it returns nothing and true.
func (m *Mounted) Recorded() ([]Access, bool) {
	r := m.lfs.recorder
	if r == nil {
		return nil, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Access{}, r.order...), time.Now().After(r.until)
}
