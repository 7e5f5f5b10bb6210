package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// osCmd is a started consul-lock process and its stderr.
type osCmd struct {
	cmd    *exec.Cmd
	errOut *strings.Builder
}

// wait waits up to d for the process to exit and returns its exit status.
func (c *osCmd) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("consul-lock still running after %v", d)
		return 0
	}
}
