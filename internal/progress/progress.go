// Package progress shows a long task's progress on a stream by one rule, for
// every part of consul-lock that reports progress: on a terminal one line is
// redrawn in place; on anything else (a pipe, a file, tee, CI) a plain line is
// written every few seconds, so that a log stays readable; when quiet, nothing.
// NO_COLOR redraws with spaces instead of ANSI codes; TERM=dumb, which may not
// even move the cursor, gets plain lines.
package progress

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Interval is how often a stream that is not a terminal gets a line.
const Interval = 5 * time.Second

// redrawEvery bounds how often a terminal line is redrawn: faster than the
// eye is only output.
const redrawEvery = 100 * time.Millisecond

// clearLine is ANSI "erase the line" after a carriage return.
const clearLine = "\r\033[K"

type mode int

const (
	quiet      mode = iota // nothing
	lines                  // a plain line every Interval
	redraw                 // one line redrawn with \r and ANSI erase
	redrawText             // one line redrawn with \r and spaces (NO_COLOR)
)

// Meter shows the progress of one task after another on one stream. It is
// also an io.Writer, for another program's output (Go's, building Consul):
// each line written is shown as progress. A Meter is safe for concurrent use.
type Meter struct {
	w    io.Writer
	mode mode

	mu      sync.Mutex
	last    time.Time // when progress was last shown
	drawn   int       // width of the line drawn in place; 0 when none
	partial []byte    // the start of a line written but not yet ended
}

// New returns a Meter on w that shows nothing when quiet. Otherwise its
// mode follows from w and from the NO_COLOR and TERM variables.
func New(w io.Writer, quiet bool) *Meter {
	return &Meter{w: w, mode: modeFor(w, quiet)}
}

// From returns w when it is a Meter, else a Meter on w: a function given an
// io.Writer for progress follows its caller's meter, and -q, when it has one.
func From(w io.Writer) *Meter {
	if m, ok := w.(*Meter); ok {
		return m
	}
	return New(w, false)
}

func modeFor(w io.Writer, q bool) mode {
	switch {
	case q:
		return quiet
	case !IsTerminal(w) || os.Getenv("TERM") == "dumb":
		return lines
	case os.Getenv("NO_COLOR") != "":
		return redrawText
	}
	return redraw
}

// IsTerminal reports whether w is a terminal: an *os.File on a character
// device. (/dev/null is one too, where redrawing costs nothing.)
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Show shows msg as the task's progress now, or drops it when progress was
// shown too recently: callers may call it on every step.
func (m *Meter) Show(msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.show(msg)
}

func (m *Meter) show(msg string) {
	every := redrawEvery
	if m.mode == lines {
		every = Interval
	}
	if m.mode == quiet || (!m.last.IsZero() && time.Since(m.last) < every) {
		return
	}
	m.last = time.Now()
	if m.mode == lines {
		io.WriteString(m.w, msg+"\n")
		return
	}
	msg = truncate(msg, width()-1) // a wrapped line cannot be redrawn
	n := utf8.RuneCountInString(msg)
	if m.mode == redraw {
		io.WriteString(m.w, clearLine+msg)
	} else {
		io.WriteString(m.w, "\r"+msg+strings.Repeat(" ", max(0, m.drawn-n)))
	}
	m.drawn = max(n, 1)
}

// Say writes msg as a line that stays, above the progress line, unless quiet.
func (m *Meter) Say(msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mode == quiet {
		return
	}
	m.clear()
	io.WriteString(m.w, msg+"\n")
}

// Done clears the progress line, so that what follows starts on a clean one.
func (m *Meter) Done() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.clear()
}

func (m *Meter) clear() {
	if m.drawn == 0 {
		return
	}
	if m.mode == redraw {
		io.WriteString(m.w, clearLine)
	} else {
		io.WriteString(m.w, "\r"+strings.Repeat(" ", m.drawn)+"\r")
	}
	m.drawn = 0
}

// Write shows each complete line of p as progress. It never fails: progress
// is not worth stopping a build for.
func (m *Meter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.partial = append(m.partial, p...)
	for {
		i := strings.IndexAny(string(m.partial), "\r\n")
		if i < 0 {
			return len(p), nil
		}
		if line := strings.TrimSpace(string(m.partial[:i])); line != "" {
			m.show(line)
		}
		m.partial = m.partial[i+1:]
	}
}

// width is the terminal's width from COLUMNS, else the usual 80: the
// standard library cannot ask the terminal.
func width() int {
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 1 {
		return n
	}
	return 80
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}
