package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

// exec -consul-api holds KEY/.lock as `consul lock KEY` does: the pinned
// Consul's `consul lock` waits for it instead of failing on a key "that does
// not match lock use", and takes it once exec's command ends. -n is
// refused with it.
func TestExecConsulAPIWithConsulLock(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	bin, err := consulagent.Binary(context.Background(), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	name := lockKey(t) + "/job"
	consulLock := func(args ...string) ([]byte, error) {
		cmd := exec.Command(bin, append([]string{"lock", "-http-addr=" + consultest.Shared(t).HTTPAddr()}, args...)...)
		return cmd.CombinedOutput()
	}
	if r := cli(t, "exec", "-consul-api", "-n", "2", name, "--", "true"); r.code != exitUsage {
		t.Errorf("exec -consul-api -n 2: exit %d, want %d (%s)", r.code, exitUsage, r.errOut)
	}

	stop := filepath.Join(t.TempDir(), "stop")
	proc, _ := startExec(t, "while [ ! -e "+stop+" ]; do sleep 0.05; done", "-consul-api", name)
	pair, _, err := c.KV().Get(name+"/.lock", nil)
	if err != nil || pair == nil || pair.Session == "" || pair.Flags != api.LockFlagValue {
		t.Fatalf("exec -consul-api holds %s/.lock as %+v (%v); want it held with consul/api's flags", name, pair, err)
	}
	out, err := consulLock("-try=300ms", name, "true")
	if err == nil || strings.Contains(string(out), "does not match") {
		t.Fatalf("consul lock -try while exec holds: %v\n%s\nwant it to time out, not to conflict", err, out)
	}
	consultest.DestroyConsulLockSessions(t, c, name) // its process exits before it destroys it

	os.WriteFile(stop, nil, 0o644)
	if code := proc.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exec exited %d: %s", code, proc.errOut.String())
	}
	if out, err := consulLock("-try=5s", name, "true"); err != nil {
		t.Fatalf("consul lock after exec released: %v\n%s", err, out)
	}
	consultest.DestroyConsulLockSessions(t, c, name)
	consultest.Eventually(t, 5*time.Second, "no key left under "+name, func() bool {
		pairs, _, err := c.KV().List(name, nil)
		return err == nil && len(pairs) == 0
	})
}
