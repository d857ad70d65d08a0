package fs

import (
	"sync"
	"time"
)

// Access is a file's first open after the mount, and how much of it was read during the
// recording window.
type Access struct {
	Path string
	At   time.Time
	Size int64 // the file's size
	Read int64 // bytes read from it in the window (each page the kernel asked for once)
	// Unmetered is set when an open in the window was passed through to the kernel (the file
	// was complete): its reads do not reach rill, and Read says nothing.
	Unmetered bool
}

// recorder keeps the order of first opens during a window after the mount: what the image
// reads at start, in first-access order — its prefetch profile.
type recorder struct {
	until time.Time
	mu    sync.Mutex
	seen  map[string]int // index in order
	order []Access
}

// maxRecorded bounds a recording (a start-up that opens more files than this is not one).
const maxRecorded = 100_000

func newRecorder(window time.Duration) *recorder {
	return &recorder{until: time.Now().Add(window), seen: map[string]int{}}
}

func (r *recorder) opened(path string, size int64) {
	now := time.Now()
	if now.After(r.until) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.seen[path]; ok || len(r.order) >= maxRecorded {
		return
	}
	r.seen[path] = len(r.order)
	r.order = append(r.order, Access{Path: path, At: now, Size: size})
}

// passedThrough marks path as read by the kernel directly (see Access.Unmetered).
func (r *recorder) passedThrough(path string) {
	if time.Now().After(r.until) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.seen[path]; ok {
		r.order[i].Unmetered = true
	}
}

// read counts n bytes read from path during the window.
func (r *recorder) read(path string, n int) {
	if n <= 0 || time.Now().After(r.until) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.seen[path]; ok {
		r.order[i].Read = min(r.order[i].Read+int64(n), r.order[i].Size)
	}
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
