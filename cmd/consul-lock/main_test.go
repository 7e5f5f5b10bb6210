package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	// -trimpath, as a release is built: the binary then finds the checkout
	// to build Consul in from its working directory, which a test can set.
	if out, err := exec.Command("go", "build", "-trimpath", "-o", bin, ".").CombinedOutput(); err != nil {
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
// that consullock made for it, and says what is left if it does.
func assertGone(t *testing.T, c *api.Client, key string) {
	t.Helper()
	full := "locks/ephemeral/" + key
	consultest.Settles(t, 5*time.Second, "no key and no session left for "+full, func() string { return leftFor(t, c, full) })
}

// leftFor describes the key fullKey and the sessions made for it, if any.
func leftFor(t *testing.T, c *api.Client, fullKey string) string {
	t.Helper()
	pair, _, err := c.KV().Get(fullKey, nil)
	switch {
	case err != nil:
		return err.Error()
	case pair != nil:
		return fmt.Sprintf("the key, held by session %q, value %q", pair.Session, pair.Value)
	}
	if n := countSessions(t, c, fullKey); n > 0 {
		return fmt.Sprintf("%d sessions", n)
	}
	return ""
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

// Bad flags, arguments and lock names exit 64, with nothing written to
// Consul, whether or not an agent answers.
func TestUsageErrorsExit64(t *testing.T) {
	usage := [][]string{
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
		{"exec", "-n", "2", "../x", "--", "true"},
		{"exec", "-n", "0", "k", "--", "true"},
		{"exec", "-lock-delay", "2m", "k", "--", "true"},
		{"status"},
		{"status", "../x"},
		{"release"},
		{"release", "-yes", "../x"},
		{"exec", "-token-file", "/nonexistent/token", "k", "--", "true"},
		{"exec", "-ca-file", "/nonexistent/ca.pem", "../x", "--", "true"},
		{"status", "-token-file", "/nonexistent/token", "k"},
	}
	c := consultest.Client(t)
	before := sessionIDs(t, c)
	// A usage error is found before the agent is asked anything: the same
	// status with no agent at all (a closed port) as with the real one.
	for _, addr := range []string{"127.0.0.1:1", consultest.Shared(t).HTTPAddr()} {
		for _, args := range usage {
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+addr)
			var errOut bytes.Buffer
			cmd.Stderr = &errOut
			cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != exitUsage {
				t.Errorf("consul-lock %q with the agent at %s exited %d, want %d (stderr: %s)", args, addr, code, exitUsage, errOut.String())
			}
		}
	}
	if after := sessionIDs(t, c); len(after) != len(before) {
		t.Errorf("usage errors left sessions: %d before, %d after", len(before), len(after))
	}
	for _, key := range []string{"locks/ephemeral/k", "locks/ephemeral/k/", "locks/ephemeral/x"} {
		if keys, _, _ := c.KV().Keys(key, "", nil); len(keys) != 0 {
			t.Errorf("usage errors left keys: %q", keys)
		}
	}
	r := cli(t, "exec", "-h")
	if r.code != 0 || !strings.Contains(r.out, "Usage: consul-lock exec") || r.errOut != "" {
		t.Errorf("consul-lock exec -h exited %d with stdout %q, stderr %q, want 0 and its usage on stdout", r.code, r.out, r.errOut)
	}
}

func sessionIDs(t *testing.T, c *api.Client) []string {
	t.Helper()
	all, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range all {
		ids = append(ids, s.ID)
	}
	return ids
}
