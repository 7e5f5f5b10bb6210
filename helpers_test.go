package consullock_test

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

func TestMain(m *testing.M) {
	if os.Getenv(holderEnv) != "" { // this test binary, started as a holder process
		os.Exit(runHolder())
	}
	consultest.Main(m)
}

// lockName gives each test a lock name of its own, so parallel tests never
// share a key by accident.
func lockName(t testing.TB, suffix string) string {
	return strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "/" + suffix
}

func newLock(t testing.TB, c *api.Client, name string, opts ...consullock.Option) *consullock.EphemeralLock {
	t.Helper()
	l, err := consullock.NewEphemeralLock(name, append([]consullock.Option{consullock.WithClient(c)}, opts...)...)
	if err != nil {
		t.Fatalf("NewEphemeralLock(%q): %v", name, err)
	}
	return l
}

// release releases l at the end of the test, so a failed test leaves no
// session behind for the next one.
func releaseAtEnd(t testing.TB, l *consullock.EphemeralLock) {
	t.Cleanup(func() {
		if err := l.Release(context.Background()); err != nil {
			t.Errorf("release %s at cleanup: %v", l.Key(), err)
		}
	})
}

func mustAcquire(t testing.TB, c *api.Client, name string, opts ...consullock.Option) *consullock.EphemeralLock {
	t.Helper()
	l := newLock(t, c, name, opts...)
	releaseAtEnd(t, l)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatalf("Acquire %s: %v", l.Key(), err)
	}
	return l
}

// holderSession returns the session holding key, or "" when nobody does.
func holderSession(t testing.TB, c *api.Client, key string) string {
	t.Helper()
	pair, _, err := c.KV().Get(key, nil)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if pair == nil {
		return ""
	}
	return pair.Session
}

// sessionsNamed counts the sessions consullock created for key.
func sessionsNamed(t testing.TB, c *api.Client, key string) int {
	t.Helper()
	all, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	n := 0
	for _, s := range all {
		if strings.HasPrefix(s.Name, "consullock: "+key+" ") {
			n++
		}
	}
	return n
}

// holdOnce runs section under a new EphemeralLock on name. Unlike newLock,
// it may run on any goroutine: it reports errors instead of failing the test.
func holdOnce(c *api.Client, name string, timeout time.Duration, section func(), opts ...consullock.Option) error {
	l, err := consullock.NewEphemeralLock(name, append([]consullock.Option{
		consullock.WithClient(c), consullock.WithAcquireTimeout(timeout)}, opts...)...)
	if err != nil {
		return err
	}
	return l.Hold(context.Background(), func(context.Context) error {
		section()
		return nil
	})
}

// proxiedClient returns a client that reaches the agent at addr through a
// fault proxy, and the proxy; both are closed when the test ends.
func proxiedClient(t *testing.T, addr string) (*api.Client, *faultproxy.Proxy) {
	t.Helper()
	proxy, err := faultproxy.Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	return clientAt(t, proxy.Addr()), proxy
}

// clientAt returns a client of its own for the agent at addr: locks built
// on different clients share no watch, as in different processes.
func clientAt(t *testing.T, addr string) *api.Client { return consultest.ClientAt(t, addr) }

// overlapDetector counts critical sections that ran at the same time.
type overlapDetector struct {
	inside   atomic.Int32
	overlaps atomic.Int32
	entries  atomic.Int32
}

func (d *overlapDetector) section(work time.Duration) {
	if d.inside.Add(1) != 1 {
		d.overlaps.Add(1)
	}
	d.entries.Add(1)
	if work > 0 {
		time.Sleep(work) // simulated work inside the critical section
	}
	d.inside.Add(-1)
}
