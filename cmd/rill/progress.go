package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/rillstream/rill/convert"
)

// progressLine is the state of one thing in progress (a layer being converted or downloaded).
type progressLine struct {
	// Label names it ("linux/amd64 layer 2/5 0123456789ab").
	Label string
	// Status is its step, in words ("converting", "pushing", "done: ...").
	Status string
	// Done of Total bytes; Counting says that the step moves them (a bar and a rate are
	// drawn, and the plain line gives the bytes).
	Done, Total int64
	Counting    bool
	// Final says that it is over: it is drawn one last time.
	Final bool
}

// progressRenderer draws progress lines to w. On a terminal it keeps one line per key (layer)
// and redraws them in place with ANSI escapes; elsewhere (a CI log, a pipe) it prints plain
// lines, one per step, and for byte counts at most one a second per key. What else is
// written to the terminal meanwhile (log lines) goes through Write, which erases the bars
// first and draws them again after: nothing interleaves with them. Close draws the last state
// and stops drawing; call it before printing the summary or an error.
type progressRenderer struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	width int // of the terminal, 0 when unknown (lines are then not cut)
	now   func() time.Time

	keys    []string // in order of appearance
	lines   map[string]*progressState
	drawn   int // lines on screen, below the cursor's column 0 after the last draw
	lastDrw time.Time
	closed  bool
}

type progressState struct {
	progressLine
	began     time.Time // of the counting step
	from      int64     // bytes done when the counting step began
	lastPlain time.Time
}

// Intervals between redraws on a terminal, and between plain lines of one key's byte counts.
const (
	redrawInterval = 100 * time.Millisecond
	plainInterval  = time.Second
	barWidth       = 24
)

func newProgressRenderer(w io.Writer, tty bool) *progressRenderer {
	r := &progressRenderer{w: w, tty: tty, now: time.Now, lines: map[string]*progressState{}}
	if tty {
		r.width = terminalWidth(w)
	}
	return r
}

// Set records the state of key and draws it (on a terminal at most every redrawInterval,
// unless a line appears, changes its step or ends).
func (r *progressRenderer) Set(key string, l progressLine) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	now := r.now()
	s, ok := r.lines[key]
	if !ok {
		s = &progressState{}
		r.lines[key] = s
		r.keys = append(r.keys, key)
	}
	if s.Final {
		return // late events of something that ended
	}
	changed := !ok || s.Status != l.Status || l.Final
	if l.Counting && (!s.Counting || s.began.IsZero() || s.Status != l.Status) {
		s.began, s.from = now, l.Done
	}
	s.progressLine = l
	if !r.tty {
		if changed || (l.Counting && now.Sub(s.lastPlain) >= plainInterval) {
			fmt.Fprintln(r.w, plainLine(l))
			s.lastPlain = now
		}
		return
	}
	if changed || now.Sub(r.lastDrw) >= redrawInterval {
		r.draw(now)
	}
}

// Write writes p (whole lines, such as a log record) above the bars.
func (r *progressRenderer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.tty || r.closed || r.drawn == 0 {
		return r.w.Write(p)
	}
	r.erase()
	n, err := r.w.Write(p)
	r.draw(r.now())
	return n, err
}

// Logf writes a line above the bars.
func (r *progressRenderer) Logf(format string, args ...any) {
	fmt.Fprintf(r, format+"\n", args...)
}

// Close draws the last state and stops drawing. It may be called more than once.
func (r *progressRenderer) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.tty && len(r.keys) > 0 {
		r.draw(r.now())
	}
	r.closed = true
}

// erase moves the cursor up over the drawn lines and clears them.
func (r *progressRenderer) erase() {
	if r.drawn > 0 {
		fmt.Fprintf(r.w, "\x1b[%dA\x1b[J", r.drawn)
		r.drawn = 0
	}
}

// draw redraws every line in place: up over the previous drawing, then each line cleared
// and written.
func (r *progressRenderer) draw(now time.Time) {
	labelWidth := 0
	for _, k := range r.keys {
		labelWidth = max(labelWidth, utf8.RuneCountInString(r.lines[k].Label))
	}
	var b strings.Builder
	if r.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", r.drawn)
	}
	for _, k := range r.keys {
		b.WriteString("\r\x1b[2K")
		b.WriteString(cut(barLine(r.lines[k], labelWidth, now), r.width))
		b.WriteString("\n")
	}
	_, _ = io.WriteString(r.w, b.String())
	r.drawn, r.lastDrw = len(r.keys), now
}

// barLine is the terminal line of s: label, bar, bytes done of total, rate, step.
func barLine(s *progressState, labelWidth int, now time.Time) string {
	frac := 0.0
	switch {
	case s.Final:
		frac = 1
	case s.Total > 0:
		frac = min(1, float64(s.Done)/float64(s.Total))
	}
	filled := int(frac * barWidth)
	bar := strings.Repeat("=", filled)
	if filled < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	line := fmt.Sprintf("%-*s [%s] %s / %s", labelWidth, s.Label, bar, mbNum(s.Done), mb(s.Total))
	if s.Counting && !s.Final {
		if el := now.Sub(s.began); el >= 500*time.Millisecond && s.Done > s.from {
			line += fmt.Sprintf("  %5.1f MB/s", float64(s.Done-s.from)/1e6/el.Seconds())
		} else {
			line += "           "
		}
	}
	return line + "  " + s.Status
}

// plainLine is the line printed for l where there is no terminal.
func plainLine(l progressLine) string {
	if l.Counting && !l.Final {
		return fmt.Sprintf("%s: %s %s of %s", l.Label, l.Status, mb(l.Done), mb(l.Total))
	}
	return l.Label + ": " + l.Status
}

// cut shortens s to width columns (runes; the lines are ASCII but for arrows), so that a line
// never wraps and the cursor movements stay right.
func cut(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) < width {
		return s
	}
	return string([]rune(s)[:width-1])
}

func mbNum(n int64) string { return fmt.Sprintf("%.1f", float64(n)/1e6) }

// Update draws a layer's conversion progress (convert.WithProgress).
func (r *progressRenderer) Update(ev convert.Progress) {
	l := progressLine{
		Label: fmt.Sprintf("%s layer %d/%d %s", ev.Platform, ev.Index+1, ev.Count, short(ev.Original.Encoded())),
		Done:  ev.Read, Total: ev.Size, Status: string(ev.Phase),
	}
	switch ev.Phase {
	case convert.PhaseConverting:
		l.Counting = true
	case convert.PhaseDone:
		res := ev.Result
		l.Final, l.Done = true, ev.Size
		l.Status = fmt.Sprintf("done: %s tar → %s eStargz (%s, TOC %s)", mb(res.OriginalSize), mb(res.Size), short(res.Digest.Encoded()), short(res.TOCDigest.Encoded()))
	}
	r.Set(ev.Platform+"/"+ev.Original.String(), l)
}

// isTerminal reports whether w is a terminal that understands ANSI escapes.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// terminalWidth returns the columns of the terminal w, 0 when unknown.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}
