package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/consullock/consullock/internal/consulagent"
)

// `consul-lock dev` on a machine with a Consul on PATH (a script that execs
// the pinned build) and no CONSULLOCK_CONSUL_BIN runs that consul, says so,
// and is ready within seconds: it builds nothing.
func TestDevUsesTheConsulOnPath(t *testing.T) {
	t.Parallel()
	pinned := os.Getenv(consulagent.EnvBinary)
	if pinned == "" {
		t.Skip(consulagent.EnvBinary + " is not set: the pinned build is not at hand to stand for an installed Consul")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "consul")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec \""+pinned+"\" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := cliCommand(t, "dev")
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool {
		return strings.HasPrefix(kv, consulagent.EnvBinary+"=") || strings.HasPrefix(kv, "PATH=")
	})
	cmd.Env = append(cmd.Env, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	var errOut syncBuffer
	cmd.Stderr = &errOut
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	proc := &osCmd{cmd: cmd, errOut: &strings.Builder{}}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "export CONSUL_HTTP_ADDR=") {
		t.Fatalf("dev printed %q (%v), want the export line; stderr:\n%s", line, err, errOut.String())
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("dev took %v to be ready with a Consul on PATH", took)
	}
	if want := "running Consul v" + consulagent.Version + " at " + fake + " (from PATH)"; !strings.Contains(errOut.String(), want) {
		t.Errorf("dev did not say %q:\n%s", want, errOut.String())
	}
	cmd.Process.Signal(syscall.SIGINT)
	if code := proc.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("dev exited %d after Ctrl-C", code)
	}
}
