package consullock_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// The behaviours below were each broken in one of the two copies of "a key
// I hold" that the core replaced; each test failed before it.

// A lease notices that its key was deleted and taken by another session
// through Err alone, without anyone having asked for Lost.
func TestLeaseErrSeesTakeoverWithoutLost(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lease, err := newLocker(t, c).Acquire(ctx, lockName(t, "k"))
	if err != nil {
		t.Fatal(err)
	}
	other := rawSession(t, c, 0)
	if _, err := c.KV().Delete(lease.Key(), nil); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := c.KV().Acquire(&api.KVPair{Key: lease.Key(), Session: other}, nil); err != nil || !ok {
		t.Fatalf("take the deleted key with another session: %v, %v", ok, err)
	}
	consultest.Eventually(t, 2*time.Second, "Err reports the takeover", func() bool {
		return errors.Is(lease.Err(), consullock.ErrLockLost)
	})
	if err := lease.Release(ctx); err != nil {
		t.Fatalf("Release after the loss: %v", err)
	}
	if holderSession(t, c, lease.Key()) != other {
		t.Fatal("the Release of a lost lease touched the key of the session that took it")
	}
}

// A take that Consul applied but whose answer was lost, followed by 11 s of
// failures, fails the acquire within its timeout, and the key is given back
// once Consul answers again, instead of staying held by the Locker's renewed
// session until Close.
func TestFailedAcquireLeavesNothingHeld(t *testing.T) {
	t.Parallel()
	direct := consultest.Client(t)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	var failUntil atomic.Int64 // unix nanoseconds
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		if until := failUntil.Load(); until != 0 {
			return faultproxy.Status500, time.Now().UnixNano() < until
		}
		if r.Method == http.MethodPut && r.URL.Path == "/v1/txn" {
			failUntil.Store(time.Now().Add(11 * time.Second).UnixNano())
			return faultproxy.ResetAfter, true // applied, answer lost
		}
		return faultproxy.Pass, false
	})
	const timeout = 2 * time.Second
	lk := newLocker(t, c, consullock.WithAcquireTimeout(timeout))
	key := "locks/ephemeral/" + lockName(t, "k")
	start := time.Now()
	_, err := lk.Acquire(context.Background(), lockName(t, "k"))
	took := time.Since(start)
	if !errors.Is(err, consullock.ErrConsul) {
		t.Fatalf("Acquire = %v, want ErrConsul", err)
	}
	if took > timeout+time.Second {
		t.Fatalf("Acquire with a %v timeout returned after %v", timeout, took)
	}
	consultest.Eventually(t, 20*time.Second, "the key taken by the lost write given back", func() bool {
		pair, _, err := direct.KV().Get(key, &api.QueryOptions{RequireConsistent: true})
		return err == nil && pair == nil
	})
	t.Logf("Acquire failed after %v; key given back %v after the start", took, time.Since(start))
}

// An Acquire that waits for another goroutine's creation of the Locker's
// session is bounded by its own acquire timeout too.
func TestAcquireTimeoutBoundsTheWaitForASession(t *testing.T) {
	t.Parallel()
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	lk := newLocker(t, c, consullock.WithAcquireTimeout(500*time.Millisecond))
	proxy.SetLatency(3 * time.Second)
	var wg sync.WaitGroup
	first := make(chan struct{})
	wg.Go(func() {
		close(first)
		l, err := lk.Acquire(context.Background(), lockName(t, "slow"))
		if err == nil {
			l.Release(context.Background())
		}
	})
	<-first
	consultest.Eventually(t, 5*time.Second, "the first goroutine creates the session", func() bool {
		return proxy.Requests(http.MethodPut, "/v1/session/create") > 0
	})
	start := time.Now()
	_, err := lk.Acquire(context.Background(), lockName(t, "other"))
	took := time.Since(start)
	proxy.SetLatency(0)
	wg.Wait()
	if err == nil || took > 2500*time.Millisecond {
		t.Fatalf("Acquire waiting for a session took %v (%v), want an error within the 500ms timeout and a second", took, err)
	}
}

// One failed list query does not fail a Semaphore's Acquire, nor a fair
// queue's: both are retried within the acquire timeout.
func TestListQueriesRetryPassingFailures(t *testing.T) {
	t.Parallel()
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	var failed atomic.Int32
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		list := r.Method == http.MethodGet && r.URL.Query().Has("recurse") &&
			(strings.Contains(r.URL.Path, "/slot-") || strings.Contains(r.URL.Path, ".queue/"))
		if list && failed.Add(1) <= 2 {
			return faultproxy.Status500, true
		}
		return faultproxy.Pass, false
	})
	ctx := context.Background()
	sem, err := newLocker(t, c, consullock.WithAcquireTimeout(5*time.Second)).Semaphore(lockName(t, "sem"), 2)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := sem.Acquire(ctx)
	if err != nil {
		t.Fatalf("Semaphore.Acquire after a failed list: %v", err)
	}
	lease.Release(ctx)
	lease, err = newLocker(t, c, consullock.WithAcquireTimeout(5*time.Second), consullock.WithFairQueueing()).Acquire(ctx, lockName(t, "fair"))
	if err != nil {
		t.Fatalf("fair Acquire after a failed list: %v", err)
	}
	lease.Release(ctx)
	if n := failed.Load(); n < 2 {
		t.Fatalf("%d list queries met the fault, want both", n)
	}
}

// A lock delay is waited out by polling with backoff, not by hammering
// Consul (AcquireAll) nor by sleeping on a blocking query that no lock
// delay's end wakes (Semaphore).
func TestLockDelayIsWaitedOut(t *testing.T) {
	t.Parallel()
	direct := consultest.Client(t)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	ctx := context.Background()
	const delay = 3 * time.Second
	holder := newLocker(t, direct, consullock.WithLockDelay(delay))
	held, err := holder.AcquireAll(ctx, lockName(t, "a"), lockName(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	sem, err := holder.Semaphore(lockName(t, "sem"), 1)
	if err != nil {
		t.Fatal(err)
	}
	slot, err := sem.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Consul invalidating the holder's session imposes the lock delay.
	if _, err := direct.Session().Destroy(held[0].Session(), nil); err != nil {
		t.Fatal(err)
	}
	<-slot.Lost()

	waiter := newLocker(t, c, consullock.WithAcquireTimeout(30*time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		leases, err := waiter.AcquireAll(ctx, lockName(t, "a"), lockName(t, "b"))
		if err != nil {
			t.Errorf("AcquireAll after a lock delay: %v", err)
			return
		}
		if took := time.Since(start); took > delay+2*time.Second {
			t.Errorf("AcquireAll took %v after a %v lock delay", took, delay)
		}
		for _, l := range leases {
			l.Release(ctx)
		}
	})
	wsem, err := waiter.Semaphore(lockName(t, "sem"), 1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lease, err := wsem.Acquire(ctx)
	if err != nil {
		t.Fatalf("Semaphore.Acquire after a lock delay: %v", err)
	}
	if took := time.Since(start); took > delay+2*time.Second {
		t.Errorf("Semaphore.Acquire took %v after a %v lock delay", took, delay)
	}
	lease.Release(ctx)
	wg.Wait()
	if n := proxy.Requests(http.MethodPut, "/v1/txn"); n > 60 {
		t.Fatalf("%d transactions to wait out a %v lock delay, want a poll with backoff", n, delay)
	}
	t.Logf("transactions while waiting out the lock delay: %d", proxy.Requests(http.MethodPut, "/v1/txn"))
}

// A second Release while the first is still trying returns the first one's
// outcome, once it is known, whether it was called on a Lease or on an
// EphemeralLock, and whatever the second's context.
func TestConcurrentReleaseReturnsTheFirstOutcome(t *testing.T) {
	t.Parallel()
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	ctx := context.Background()
	lease, err := newLocker(t, c).Acquire(ctx, lockName(t, "lease"))
	if err != nil {
		t.Fatal(err)
	}
	lock := mustAcquire(t, c, lockName(t, "lock"))
	for _, tc := range []struct {
		name    string
		release func(context.Context) error
	}{{"Lease", lease.Release}, {"EphemeralLock", lock.Release}} {
		var until atomic.Int64
		var refused atomic.Int32
		until.Store(time.Now().Add(1500 * time.Millisecond).UnixNano())
		proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
			write := r.Method == http.MethodDelete || r.Method == http.MethodPut
			if write && time.Now().UnixNano() < until.Load() {
				refused.Add(1)
				return faultproxy.Status500, true
			}
			return faultproxy.Pass, false
		})
		firstDone := make(chan time.Time, 1)
		go func() {
			if err := tc.release(ctx); err != nil {
				t.Errorf("%s: first Release: %v", tc.name, err)
			}
			firstDone <- time.Now()
		}()
		consultest.Eventually(t, 5*time.Second, "the first Release is refused and retries", func() bool { return refused.Load() > 0 })
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		err := tc.release(cancelled)
		second := time.Now()
		first := <-firstDone
		// The first's goroutine notes its end a moment after the outcome
		// is known, which is when the second may return: allow for that
		// moment, not for the 1.5 s the first spends retrying.
		if err != nil || second.Before(first.Add(-100*time.Millisecond)) {
			t.Fatalf("%s: second Release returned %v before the first had finished (%v)", tc.name, err, first.Sub(second))
		}
	}
	proxy.SetRule(nil)
}

// rawSession creates a session of the test's own, destroyed when it ends.
func rawSession(t *testing.T, c *api.Client, lockDelay time.Duration) string {
	t.Helper()
	id, _, err := c.Session().Create(&api.SessionEntry{TTL: "30s", LockDelay: lockDelay, Behavior: api.SessionBehaviorDelete}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Session().Destroy(id, nil) })
	return id
}

// A take abandoned by its caller keeps the key's local turn until Consul
// answers it (and it is undone): it cannot land on the take of the next
// local holder, which uses the same session, and end that holder's lease.
func TestAbandonedTakeKeepsTheTurn(t *testing.T) {
	t.Parallel()
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	ctx := context.Background()
	lk := newLocker(t, c, consullock.WithAcquireTimeout(10*time.Second))
	name := lockName(t, "k")
	warm, err := lk.Acquire(ctx, lockName(t, "warm-up")) // the session exists before the faults
	if err != nil {
		t.Fatal(err)
	}
	warm.Release(ctx)
	var slowed atomic.Bool
	proxy.SetSlow(700 * time.Millisecond)
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		first := r.Method == http.MethodPut && r.URL.Path == "/v1/txn" && slowed.CompareAndSwap(false, true)
		return faultproxy.Slow, first
	})
	abandon, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := lk.Acquire(abandon, name); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the abandoned Acquire: %v", err)
	}
	lease, err := lk.Acquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(ctx)
	if !slowed.Load() {
		t.Fatal("the abandoned take did not meet the slow fault")
	}
	select {
	case <-lease.Lost():
		t.Fatalf("the next holder's lease was lost: %v", lease.Err())
	case <-time.After(1500 * time.Millisecond): // the abandoned write has landed by now, at 700 ms
	}
	pair, _, err := c.KV().Get(lease.Key(), &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair == nil || pair.ModifyIndex != lease.Token() {
		t.Fatalf("inside the lease with token %d the key is %+v (%v)", lease.Token(), pair, err)
	}
}

// An acquire cancelled while its take is in flight, a take that Consul
// applied all the same, gives the key back before it ends its session:
// ending a session that holds the key would keep everyone from it for the
// lock delay. (Both copies had it once: the Locker gives the key back, the
// EphemeralLock ended its session.)
func TestAbandonedTakeImposesNoLockDelay(t *testing.T) {
	t.Parallel()
	direct := consultest.Client(t)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var txns atomic.Int32
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		if r.Method == http.MethodPut && r.URL.Path == "/v1/txn" && txns.Add(1) == 1 {
			cancel()                           // the caller gives up while the take is in flight,
			return faultproxy.ResetAfter, true // and Consul applies it
		}
		return faultproxy.Pass, false
	})
	const delay = 30 * time.Second
	l := newLock(t, c, lockName(t, "k"), consullock.WithLockDelay(delay))
	if err := l.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire = %v, want context.Canceled", err)
	}
	consultest.Eventually(t, 5*time.Second, "the failed acquire's session is gone", func() bool {
		return sessionsNamed(t, direct, l.Key()) == 0
	})
	next := newLock(t, direct, lockName(t, "k"), consullock.WithAcquireTimeout(5*time.Second))
	releaseAtEnd(t, next)
	if err := next.Acquire(context.Background()); err != nil {
		t.Fatalf("the next Acquire, within 5 s: %v (the lock delay of %v imposed?)", err, delay)
	}
}
