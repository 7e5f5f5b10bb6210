package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock/internal/consultest"
)

// 300 `consul-lock exec` processes on one host wait for one key, on an agent
// of their own with Consul's default limit of 200 connections per client
// address, more waiters than it lets connect at once: every one runs its
// command in turn, none while another runs (the command fails if the
// directory it makes exists already), and nothing is left behind. The
// waiters far back in line hold no query (see queue.go), so the line fits
// in the agent's connections.
func TestThreeHundredExecsOnOneKey(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	c := consultest.ClientOf(t, agent)
	key := lockKey(t)
	inside := filepath.Join(t.TempDir(), "inside")
	section := `mkdir "$1" || exit 99; sleep 0.002; rmdir "$1"`
	const procs = 300
	results := make([]result, procs)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			cmd := exec.Command(bin, "exec", "-timeout", "5m", key, "--", "sh", "-c", section, "sh", inside)
			cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+agent.HTTPAddr())
			var errOut bytes.Buffer
			cmd.Stderr = &errOut
			err := cmd.Run()
			if _, ok := err.(*exec.ExitError); err != nil && !ok {
				t.Errorf("run consul-lock: %v", err)
				return
			}
			results[i] = result{code: cmd.ProcessState.ExitCode(), errOut: errOut.String()}
		})
	}
	wg.Wait()
	took := time.Since(start)
	failed := 0
	for _, r := range results {
		if r.code != 0 {
			if failed == 0 {
				t.Errorf("exec exited %d: %s", r.code, r.errOut)
			}
			failed++
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d processes failed (exit 99: two commands ran at once)", failed, procs)
	}
	// A release slower than exec's bound says so and leaves the session to
	// its TTL: shown, for a leftover found below.
	for _, r := range results {
		if r.errOut != "" {
			t.Logf("a process said: %s", r.errOut)
		}
	}
	assertGone(t, c, key)
	t.Logf("%d consul-lock exec processes on one key all ran in turn in %v", procs, took.Round(time.Millisecond))
}
