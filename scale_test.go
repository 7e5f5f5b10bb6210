package consullock_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// 64 goroutines hold 1,000 distinct keys at once through one Locker, then
// give them all back, without an error.
func TestThousandKeysHeldAtOnce(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	c := consultest.ClientOf(t, agent)
	lk := newLocker(t, c)
	const goroutines, keys = 64, 1000
	var wg sync.WaitGroup
	all := make(chan *consullock.Lease, keys)
	for g := range goroutines {
		wg.Go(func() {
			for k := g; k < keys; k += goroutines {
				l, err := lk.Acquire(context.Background(), fmt.Sprintf("many/%04d", k))
				if err != nil {
					t.Errorf("acquire key %d: %v", k, err)
					return
				}
				all <- l
			}
		})
	}
	wg.Wait()
	close(all)
	held, _, err := c.KV().Keys("locks/ephemeral/many/", "", nil)
	if err != nil || len(held) != keys {
		t.Fatalf("%d keys held at once (%v), want %d", len(held), err, keys)
	}
	for l := range all {
		if err := l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if left, _, _ := c.KV().Keys("locks/ephemeral/many/", "", nil); len(left) != 0 {
		t.Fatalf("%d keys left after releasing them all", len(left))
	}
}

// After 10,000 lock cycles the process has no more goroutines than before,
// and Consul has no session or key left. Not parallel: it counts the
// process's goroutines.
func TestTenThousandCyclesLeakNothing(t *testing.T) {
	agent := consultest.DevAgent(t)
	c := consultest.ClientOf(t, agent)
	ctx := context.Background()
	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithAcquireTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const workers, cycles = 4, 10000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range cycles / workers {
				err := lk.Hold(ctx, fmt.Sprintf("cycle/%d", (w+i)%8), func(context.Context) error { return nil })
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := lk.Close(ctx); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 5*time.Second, "goroutines back to their number before the cycles", func() bool {
		return runtime.NumGoroutine() <= before
	})
	sessions, _, err := c.Session().List(nil)
	if err != nil || len(sessions) != 0 {
		t.Fatalf("%d sessions left (%v)", len(sessions), err)
	}
	if keys, _, _ := c.KV().Keys("locks/", "", nil); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// The loss watches of 300 leases share a few blocking queries, within
// Consul's limit of connections per client, and still notice a deleted key
// within a second.
func TestWatchesShareFewQueries(t *testing.T) {
	t.Parallel()
	direct := consultest.Client(t)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	lk := newLocker(t, c)
	ctx := context.Background()
	var leases []*consullock.Lease
	for i := range 300 {
		l, err := lk.Acquire(ctx, lockName(t, fmt.Sprintf("k%03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	victim := leases[137]
	start := time.Now()
	if _, err := direct.KV().Delete(victim.Key(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.Lost():
	case <-time.After(time.Second):
		t.Fatal("a deleted key among 300 watched was not noticed within a second")
	}
	noticed := time.Since(start)
	now, most := proxy.BlockingInFlight()
	if most > 16 {
		t.Fatalf("%d blocking queries in flight at once for 300 leases (%d now), want a few", most, now)
	}
	for _, l := range leases {
		if l != victim && l.Err() != nil {
			t.Fatalf("lease %s lost: %v", l.Key(), l.Err())
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("300 leases: at most %d blocking queries at once; a deleted key noticed in %v", most, noticed)
}
