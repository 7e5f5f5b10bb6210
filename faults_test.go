package consullock_test

import (
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// Through a proxy that answers 500 and 429 and resets connections (also
// after the agent applied a write), every lock cycle still succeeds within its
// deadline, critical sections never overlap, and no session is left behind,
// not even one whose creation the client never heard of.
func TestRetriesPassingFaults(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	c, proxy := proxiedClient(t, agent.HTTPAddr())
	proxy.SetFaults(0.2, faultproxy.Status500, faultproxy.Status429, faultproxy.ResetBefore, faultproxy.ResetAfter)

	const workers, rounds = 4, 25
	var d overlapDetector
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				err := holdOnce(c, lockName(t, "k"), 30*time.Second, func() { d.section(time.Millisecond) })
				if err != nil {
					t.Errorf("lock cycle through the fault proxy: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if d.overlaps.Load() != 0 || d.entries.Load() != workers*rounds {
		t.Fatalf("%d overlaps in %d critical sections, want 0 in %d", d.overlaps.Load(), d.entries.Load(), workers*rounds)
	}
	counts := proxy.Counts()
	t.Logf("%d lock cycles through the proxy; requests: %v", workers*rounds, counts)
	if counts[faultproxy.ResetAfter] == 0 || counts[faultproxy.Status500] == 0 {
		t.Fatalf("the proxy injected too few faults to test anything: %v", counts)
	}
	proxy.SetFaults(0)
	consultest.Eventually(t, 15*time.Second, "no session or key left in the agent", func() bool {
		sessions, _, err1 := direct.Session().List(nil)
		keys, _, err2 := direct.KV().Keys("locks/", "", nil)
		return err1 == nil && err2 == nil && len(sessions) == 0 && len(keys) == 0
	})
}
