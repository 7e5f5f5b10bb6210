package progress

import (
	"bytes"
	"strings"
	"testing"
)

// A stream that is not a terminal gets plain lines, at most one per
// Interval: the first at once, none of the rest that follow it soon.
func TestLinesWhenNotATerminal(t *testing.T) {
	var b bytes.Buffer
	m := New(&b, false)
	for i := range 1000 {
		m.Show(strings.Repeat("x", i%10+1))
	}
	m.Say("a line that stays")
	m.Done()
	if got, want := b.String(), "x\na line that stays\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

// Quiet shows nothing at all, not even the lines that stay.
func TestQuietShowsNothing(t *testing.T) {
	var b bytes.Buffer
	m := New(&b, true)
	m.Show("step")
	m.Say("a line")
	m.Write([]byte("go: downloading x\n"))
	m.Done()
	if b.Len() != 0 {
		t.Errorf("quiet wrote %q", b.String())
	}
}

// On a terminal the line is redrawn in place, with ANSI erase, or with
// spaces under NO_COLOR, and cleared before a line that stays.
func TestRedraw(t *testing.T) {
	for _, c := range []struct {
		mode mode
		want string
	}{
		{redraw, "\r\033[Klonger\r\033[Ksaid\n"},
		{redrawText, "\rlonger\r      \rsaid\n"},
	} {
		var b bytes.Buffer
		m := &Meter{w: &b, mode: c.mode}
		m.Show("longer")
		m.Show("dropped: too soon after the last")
		m.Say("said")
		m.Done() // nothing left to clear
		if b.String() != c.want {
			t.Errorf("mode %d wrote %q, want %q", c.mode, b.String(), c.want)
		}
	}
}

// Another program's output, written in pieces, is shown line by line;
// a line too wide for the terminal is cut, as a wrapped one cannot be
// redrawn.
func TestWriteShowsLines(t *testing.T) {
	var b bytes.Buffer
	m := &Meter{w: &b, mode: redraw}
	t.Setenv("COLUMNS", "10")
	m.Write([]byte("go: downl"))
	if b.Len() != 0 {
		t.Fatalf("half a line shown: %q", b.String())
	}
	m.Write([]byte("oading example.com/m v1.0.0\n"))
	if got, want := b.String(), "\r\033[Kgo: downl"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

// From keeps the caller's Meter, so that -q reaches a function that takes
// an io.Writer.
func TestFromKeepsAMeter(t *testing.T) {
	m := New(&bytes.Buffer{}, true)
	if From(m) != m {
		t.Error("From wrapped a Meter")
	}
	if From(&bytes.Buffer{}).mode != lines {
		t.Error("a buffer is not shown as plain lines")
	}
}
