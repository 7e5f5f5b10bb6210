package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consultest"
)

// bin is the consul-lock binary under test, built by TestMain: the tests
// drive it as a user would, as a subprocess.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "consul-lock-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "consul-lock")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build consul-lock: %v\n%s", err, out)
		os.Exit(1)
	}
	code := consultest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is how a consul-lock process ended.
type result struct {
	code        int
	out, errOut string
}

// cli runs consul-lock with args against the shared agent and waits for it.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	cmd := cliCommand(t, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run consul-lock %q: %v", args, err)
	}
	return result{cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
}

// cliCommand prepares consul-lock with args, pointed at the shared agent.
func cliCommand(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+consultest.Shared(t).HTTPAddr())
	return cmd
}

// lockKey gives each test a lock KEY of its own.
func lockKey(t *testing.T) string {
	return strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
}

// assertGone checks that Consul has neither the lock's key nor a session
// that consullock made for it.
func assertGone(t *testing.T, c *api.Client, key string) {
	t.Helper()
	full := "locks/ephemeral/" + key
	consultest.Eventually(t, 5*1e9, "no key and no session left for "+full, func() bool {
		pair, _, err := c.KV().Get(full, nil)
		if err != nil || pair != nil {
			return false
		}
		return countSessions(t, c, full) == 0
	})
}

func countSessions(t *testing.T, c *api.Client, fullKey string) int {
	t.Helper()
	all, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range all {
		if strings.HasPrefix(s.Name, "consullock: "+fullKey+" ") {
			n++
		}
	}
	return n
}

func TestUsageErrorsExit64(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"no-such-command"},
		{"demo", "-no-such-flag"},
		{"demo", "-workers", "0"},
		{"exec"},
		{"exec", "k"},
		{"exec", "k", "--"},
		{"exec", "-ttl", "5s", "k", "--", "true"},
		{"exec", "-try", "-timeout", "1s", "k", "--", "true"},
		{"exec", "a b", "--", "true"},
		{"exec", "../x", "--", "true"},
		{"status"},
		{"release"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, stdio{strings.NewReader(""), &out, &errb}); code != exitUsage {
			t.Errorf("consul-lock %q exited %d, want %d (stderr: %s)", args, code, exitUsage, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"exec", "-h"}, stdio{nil, &out, &errb}); code != 0 || !strings.Contains(errb.String(), "Usage: consul-lock exec") {
		t.Errorf("consul-lock exec -h exited %d with %q, want 0 and its usage", code, errb.String())
	}
}
