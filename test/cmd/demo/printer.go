package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// printer writes the demo's narration: numbered steps, indented details, step timings.
type printer struct {
	w     io.Writer
	step  int
	began time.Time
}

func newPrinter(w io.Writer) *printer { return &printer{w: w} }

// Step starts a numbered step, closing the previous one with its duration.
func (p *printer) Step(format string, args ...any) {
	p.Done()
	p.step++
	p.began = time.Now()
	fmt.Fprintf(p.w, "\n==> %d. %s\n", p.step, fmt.Sprintf(format, args...))
}

// Done prints how long the current step took (once).
func (p *printer) Done() {
	if !p.began.IsZero() {
		fmt.Fprintf(p.w, "    (%s)\n", time.Since(p.began).Round(time.Millisecond))
		p.began = time.Time{}
	}
}

// Detail prints an indented line (or lines).
func (p *printer) Detail(format string, args ...any) {
	for _, line := range strings.Split(strings.TrimRight(fmt.Sprintf(format, args...), "\n"), "\n") {
		fmt.Fprintf(p.w, "    %s\n", line)
	}
}
