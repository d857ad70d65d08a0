package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/rillstream/rill/convert"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newTestRenderer(tty bool) (*progressRenderer, *bytes.Buffer, *fakeClock) {
	var buf bytes.Buffer
	clock := &fakeClock{t: time.Unix(1700000000, 0)}
	r := newProgressRenderer(&buf, tty)
	r.now, r.width = clock.now, 120
	return r, &buf, clock
}

var ansi = regexp.MustCompile(`\x1b\[[0-9]*[A-Za-z]`)

// screen replays what the renderer wrote on a tiny terminal that understands the escapes it
// uses (cursor up, clear line, clear below, carriage return) and returns the lines shown.
func screen(out string) []string {
	var lines []string
	row := 0
	for len(out) > 0 {
		if loc := ansi.FindStringIndex(out); loc != nil && loc[0] == 0 {
			esc := out[loc[0]:loc[1]]
			out = out[loc[1]:]
			switch esc[len(esc)-1] {
			case 'A':
				n := 1
				if len(esc) > 3 {
					n = 0
					for _, c := range esc[2 : len(esc)-1] {
						n = n*10 + int(c-'0')
					}
				}
				row = max(0, row-n)
			case 'K':
				if row < len(lines) {
					lines[row] = ""
				}
			case 'J':
				if row < len(lines) {
					lines = lines[:row]
				}
			}
			continue
		}
		c, size := utf8.DecodeRuneInString(out)
		out = out[size:]
		switch c {
		case '\r':
		case '\n':
			row++
		default:
			for len(lines) <= row {
				lines = append(lines, "")
			}
			lines[row] += string(c)
		}
	}
	return lines
}

func layerEvent(n int, phase convert.Phase, read int64) convert.Progress {
	return convert.Progress{Original: digest.FromString(string(rune('a' + n))), Index: n, Count: 2, Platform: "linux/amd64", Phase: phase, Read: read, Size: 10e6}
}

// On a terminal: one line per layer, redrawn in place (bar, bytes, rate, step), at most
// every 100ms but at once when a step changes; a log line goes above the bars; the last
// state is drawn on Close and nothing after.
func TestProgressOnTerminal(t *testing.T) {
	r, buf, clock := newTestRenderer(true)
	r.Update(layerEvent(0, convert.PhaseConverting, 0))
	r.Update(layerEvent(1, convert.PhaseConverting, 0))
	clock.advance(time.Second)
	r.Update(layerEvent(0, convert.PhaseConverting, 5e6))
	got := screen(buf.String())
	if len(got) != 2 {
		t.Fatalf("two layers drew %d lines: %q", len(got), got)
	}
	l0, l1 := layerEvent(0, "", 0).Original.Encoded()[:12], layerEvent(1, "", 0).Original.Encoded()[:12]
	want0 := "linux/amd64 layer 1/2 " + l0 + " [============>           ] 5.0 / 10.0 MB    5.0 MB/s  converting"
	if got[0] != want0 {
		t.Errorf("line of layer 1:\n got %q\nwant %q", got[0], want0)
	}
	if !strings.HasPrefix(got[1], "linux/amd64 layer 2/2 "+l1+" [>") || !strings.HasSuffix(got[1], "converting") {
		t.Errorf("line of layer 2: %q", got[1])
	}

	// Within 100ms of the last drawing, a byte count is not drawn; a new step is.
	before := buf.Len()
	clock.advance(10 * time.Millisecond)
	r.Update(layerEvent(0, convert.PhaseConverting, 6e6))
	if buf.Len() != before {
		t.Error("redrawn within 100ms for a byte count")
	}
	r.Update(layerEvent(1, convert.PhasePushing, 10e6))
	if got := screen(buf.String()); !strings.HasSuffix(got[1], "] 10.0 / 10.0 MB  pushing") || !strings.Contains(got[0], "6.0 / 10.0 MB") {
		t.Errorf("after a step: %q", got)
	}

	r.Logf("level=warning msg=%q", "something to say")
	got = screen(buf.String())
	if len(got) != 3 || got[0] != `level=warning msg="something to say"` || !strings.Contains(got[1], "layer 1/2") || !strings.Contains(got[2], "layer 2/2") {
		t.Errorf("a log line during the bars: %q", got)
	}

	res := &convert.Layer{Digest: digest.FromString("out"), TOCDigest: digest.FromString("toc"), Size: 11e6, OriginalSize: 20e6}
	ev := layerEvent(0, convert.PhaseDone, 10e6)
	ev.Result = res
	r.Update(ev)
	r.Close()
	r.Update(layerEvent(1, convert.PhaseConverting, 1)) // after Close: nothing
	r.Logf("summary")
	got = screen(buf.String())
	if len(got) != 4 || !strings.Contains(got[1], "[========================] 10.0 / 10.0 MB  done: 20.0 MB tar → 11.0 MB eStargz") || got[3] != "summary" {
		t.Errorf("after Close: %q", got)
	}
	if s := buf.String(); strings.Contains(s[strings.LastIndex(s, "summary"):], "\x1b") {
		t.Errorf("escapes after Close: %q", s)
	}
}

// Without a terminal: plain lines, one per step, byte counts at most once a second per layer,
// no escapes.
func TestProgressPlain(t *testing.T) {
	r, buf, clock := newTestRenderer(false)
	r.Update(layerEvent(0, convert.PhaseConverting, 0))
	clock.advance(100 * time.Millisecond)
	r.Update(layerEvent(0, convert.PhaseConverting, 1e6)) // too soon
	clock.advance(time.Second)
	r.Update(layerEvent(0, convert.PhaseConverting, 5e6))
	r.Update(layerEvent(0, convert.PhaseVerifying, 10e6))
	r.Update(layerEvent(0, convert.PhasePushing, 10e6))
	ev := layerEvent(0, convert.PhaseDone, 10e6)
	ev.Result = &convert.Layer{Digest: digest.FromString("out"), TOCDigest: digest.FromString("toc"), Size: 11e6, OriginalSize: 20e6}
	r.Update(ev)
	r.Close()
	l0 := ev.Original.Encoded()[:12]
	p := "linux/amd64 layer 1/2 " + l0 + ": "
	want := p + "converting 0.0 MB of 10.0 MB\n" + p + "converting 5.0 MB of 10.0 MB\n" + p + "verifying\n" + p + "pushing\n" +
		p + "done: 20.0 MB tar → 11.0 MB eStargz (" + digest.FromString("out").Encoded()[:12] + ", TOC " + digest.FromString("toc").Encoded()[:12] + ")\n"
	if buf.String() != want {
		t.Errorf("plain progress:\n got %q\nwant %q", buf.String(), want)
	}
}

// Lines never wrap on a narrow terminal (the cursor movements count lines).
func TestProgressCutsToWidth(t *testing.T) {
	r, buf, _ := newTestRenderer(true)
	r.width = 40
	r.Update(layerEvent(0, convert.PhaseConverting, 0))
	for _, l := range screen(buf.String()) {
		if len([]rune(l)) >= 40 {
			t.Errorf("a line of %d columns on a 40-column terminal: %q", len([]rune(l)), l)
		}
	}
}
