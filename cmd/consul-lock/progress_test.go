package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/consullock/consullock/internal/consultest"
)

// benchArgs make a short bench: a few seconds of cases.
var benchArgs = []string{"bench", "-cycles", "100", "-workers", "2", "-duration", "500ms"}

// onPTY runs the binary with stderr a pseudo-terminal and stdout a pipe,
// in dir when not empty, and returns all that the terminal received.
func onPTY(t *testing.T, dir string, env []string, args ...string) (r result) {
	t.Helper()
	master, term := openPTY(t)
	defer master.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, term
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	term.Close() // the process has its own; the master reads EIO once it exits
	var errOut bytes.Buffer
	read := make(chan error, 1)
	go func() { _, err := io.Copy(&errOut, master); read <- err }()
	cmd.Wait()
	select {
	case err := <-read:
		if !errors.Is(err, syscall.EIO) && err != nil {
			t.Errorf("read the terminal: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal was not closed 10s after consul-lock exited")
	}
	return result{cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
}

// With stderr a pipe (tee, CI), bench's progress is plain lines: no \r and
// no ESC, at least one line, and the report on stdout. With -q, no
// progress at all.
func TestBenchProgressInALog(t *testing.T) {
	addr := "CONSUL_HTTP_ADDR=" + consultest.Shared(t).HTTPAddr()
	r := runBin(t, "", []string{addr, "TERM=xterm"}, benchArgs...)
	if r.code != 0 || !strings.Contains(r.out, "Uncontended") {
		t.Fatalf("bench exited %d, stdout %q, stderr %q", r.code, r.out, r.errOut)
	}
	if strings.ContainsAny(r.errOut, "\r\x1b") {
		t.Errorf("bench's progress in a log has \\r or ESC: %q", r.errOut)
	}
	if !strings.Contains(r.errOut, "\nbench: ") || !strings.HasSuffix(r.errOut, "\n") {
		t.Errorf("bench's progress in a log has no whole progress line: %q", r.errOut)
	}
	q := runBin(t, "", []string{addr}, append(benchArgs, "-q")...)
	if q.code != 0 || q.errOut != "" || !strings.Contains(q.out, "Uncontended") {
		t.Errorf("bench -q exited %d, stderr %q; want 0, no progress and the report", q.code, q.errOut)
	}
}

// With stderr a terminal, bench redraws its progress on one line with \r
// and the ANSI erase, and clears it at the end; NO_COLOR redraws with
// spaces and no ANSI code; TERM=dumb gets plain lines.
func TestBenchProgressOnATerminal(t *testing.T) {
	addr := "CONSUL_HTTP_ADDR=" + consultest.Shared(t).HTTPAddr()
	r := onPTY(t, "", []string{addr, "TERM=xterm"}, benchArgs...)
	if r.code != 0 || !strings.Contains(r.out, "Uncontended") {
		t.Fatalf("bench exited %d, stdout %q, terminal %q", r.code, r.out, r.errOut)
	}
	if n := strings.Count(r.errOut, "\r\x1b[Kbench: "); n < 2 || !strings.HasSuffix(r.errOut, "\r\x1b[K") || strings.Contains(r.errOut, "\nbench: ") {
		t.Errorf("bench on a terminal redrew %d times, want at least 2, in place, and a cleared line at the end: %q", n, r.errOut)
	}
	r = onPTY(t, "", []string{addr, "TERM=xterm", "NO_COLOR=1"}, benchArgs...)
	if r.code != 0 || strings.Contains(r.errOut, "\x1b") || strings.Count(r.errOut, "\rbench: ") < 2 {
		t.Errorf("bench with NO_COLOR exited %d; want redraws with \\r and no ESC: %q", r.code, r.errOut)
	}
	r = onPTY(t, "", []string{addr, "TERM=dumb"}, benchArgs...)
	if r.code != 0 || strings.ContainsAny(r.errOut, "\r\x1b") || !strings.Contains(r.errOut, "\nbench: ") {
		t.Errorf("bench with TERM=dumb exited %d; want plain lines: %q", r.code, r.errOut)
	}
}

// fakeGoLines is how many lines the fake Go build prints before it fails.
const fakeGoLines = 40

// fakeCheckout makes a folder that the binary takes for a consullock
// checkout, and a `go` that prints download lines for two seconds and
// fails: the Consul build's progress, tested without building Consul.
func fakeCheckout(t *testing.T) (dir string, env []string) {
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "tools", "consul"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tools", "consul", "go.mod"), []byte("module fake\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
i=0
while [ $i -lt ` + strconv.Itoa(fakeGoLines) + ` ]; do echo "go: downloading example.com/m$i v1.0.0"; i=$((i+1)); sleep 0.05; done
echo "fake go: build failed" >&2
exit 1
`
	if err := os.MkdirAll(filepath.Join(dir, "fakebin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fakebin", "go"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// Last in the environment, these win: no Consul binary given, and the
	// fake go first.
	env = []string{"CONSULLOCK_CONSUL_BIN=", "PATH=" + filepath.Join(dir, "fakebin") + string(os.PathListSeparator) + os.Getenv("PATH")}
	return dir, env
}

// The Consul build's progress follows the same rule as bench's: in a log,
// its line and a few of Go's lines, no \r or ESC; on a terminal, Go's lines
// redrawn in place and cleared before the error; with bench -q, only the
// error. The error always ends with Go's last lines.
func TestConsulBuildProgress(t *testing.T) {
	dir, env := fakeCheckout(t)
	check := func(name string, r result, who string) (progress string) {
		t.Helper()
		progress, errLine, ok := strings.Cut(r.errOut, who+": build Consul v1.16.3")
		if r.code != exitSoftware || !ok || !strings.Contains(errLine, "fake go: build failed") {
			t.Fatalf("%s: exited %d, stderr %q; want %d and the build's error with Go's last lines", name, r.code, r.errOut, exitSoftware)
		}
		return progress
	}
	log := check("in a log", runBin(t, dir, env, "dev"), "consul-lock dev")
	if strings.ContainsAny(log, "\r\x1b") || !strings.Contains(log, "consulagent: building Consul v1.16.3") {
		t.Errorf("the Consul build's progress in a log: %q", log)
	}
	if n := strings.Count(log, "go: downloading"); n < 1 || n > fakeGoLines/4 {
		t.Errorf("the Consul build's progress in a log has %d of Go's %d lines, want a few", n, fakeGoLines)
	}
	term := check("on a terminal", onPTY(t, dir, append(env, "TERM=xterm"), "dev"), "consul-lock dev")
	if strings.Count(term, "\r\x1b[Kgo: downloading") < 2 || !strings.HasSuffix(term, "\r\x1b[K") {
		t.Errorf("the Consul build's progress on a terminal is not redrawn in place and cleared: %q", term)
	}
	quiet := check("bench -q", runBin(t, dir, env, "bench", "-q"), "consul-lock bench")
	if quiet != "" {
		t.Errorf("bench -q showed the Consul build's progress: %q", quiet)
	}
}
