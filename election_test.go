package consullock_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Workers contend for one key through a follower of a 3-server cluster
// while the leader is killed and later restarted. Every acquire that still
// had 5 s of its deadline when it failed is a failure of the retry logic;
// critical sections never overlap.
func TestRidesOutLeaderElections(t *testing.T) {
	t.Parallel()
	cl := consultest.Cluster(t, 3)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	follower := cl.Followers(leader)[0]
	c := consultest.ClientOf(t, follower)
	name := lockName(t, "k")

	const workers, acquireTimeout, run = 4, 15 * time.Second, 20 * time.Second
	var d overlapDetector
	var cycles, failures atomic.Int32
	stop := time.Now().Add(run)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				start := time.Now()
				err := holdOnce(c, name, acquireTimeout, func() { d.section(20 * time.Millisecond) },
					consullock.WithLockTimeout(15*time.Second))
				if err == nil {
					cycles.Add(1)
					continue
				}
				failures.Add(1)
				if left := acquireTimeout - time.Since(start); left >= 5*time.Second {
					t.Errorf("lock cycle failed with %v of its acquire deadline left: %v", left.Round(time.Millisecond), err)
				} else {
					t.Logf("lock cycle failed at its deadline: %v", err)
				}
			}
		})
	}

	time.Sleep(3 * time.Second) // let the workers run against a healthy cluster first
	killed := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	next, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s killed; %s elected after %v", leader.Name(), next.Name(), time.Since(killed).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // run under the new leader before the old one returns
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := leader.WaitReady(ctx); err != nil {
		t.Fatalf("restarted server: %v", err)
	}
	wg.Wait()

	if d.overlaps.Load() != 0 {
		t.Fatalf("%d overlapping critical sections", d.overlaps.Load())
	}
	if cycles.Load() == 0 {
		t.Fatal("no lock cycle completed")
	}
	t.Logf("%d lock cycles by %d workers across a leader kill and restart, %d failed at their deadline, 0 overlaps", cycles.Load(), workers, failures.Load())
	sessions, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 0 {
		t.Fatalf("%d sessions left in the cluster", len(sessions))
	}
}
