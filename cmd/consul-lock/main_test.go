package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/consullock/consullock/internal/consultest"
)

func TestMain(m *testing.M) { consultest.Main(m) }

// The demo's workers take turns: in its timeline every "acquired" is
// followed by the same worker's "releases" before anyone else acquires.
func TestDemoWorkersTakeTurns(t *testing.T) {
	consultest.Shared(t) // the demo finds it through CONSUL_HTTP_ADDR
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"demo", "-workers", "3", "-rounds", "4", "-hold", "10ms", "-key", "demo-test"}, &out, &errb)
	if code != 0 {
		t.Fatalf("demo exited %d: %s", code, errb.String())
	}
	holder, sections := "", 0
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[1] != "worker" {
			continue
		}
		who := f[2]
		switch f[3] {
		case "acquired":
			if holder != "" {
				t.Fatalf("worker %s acquired while worker %s held the lock:\n%s", who, holder, out.String())
			}
			holder = who
			sections++
		case "releases":
			if holder != who {
				t.Fatalf("worker %s released a lock held by %q:\n%s", who, holder, out.String())
			}
			holder = ""
		}
	}
	if sections != 12 {
		t.Fatalf("%d critical sections in the timeline, want 12:\n%s", sections, out.String())
	}
	if !strings.Contains(errb.String(), "using the Consul agent at") {
		t.Fatalf("demo did not use the agent at CONSUL_HTTP_ADDR: %s", errb.String())
	}
}

func TestUsageErrorsExit64(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"no-such-command"},
		{"demo", "-no-such-flag"},
		{"demo", "-workers", "0"},
		{"demo", "extra-argument"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUsage {
			t.Errorf("consul-lock %q exited %d, want %d (stderr: %s)", args, code, exitUsage, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"demo", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "Usage: consul-lock demo") {
		t.Errorf("consul-lock demo -h exited %d with %q, want 0 and its usage", code, errb.String())
	}
}
