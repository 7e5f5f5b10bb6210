package consullock_test

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
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

// Lockers on clients of their own stand for processes on different hosts:
// they share no watch and no local turn, only Consul.

// queued waits until n contender keys wait for key.
func queued(t *testing.T, c *api.Client, key string, n int) []*api.KVPair {
	t.Helper()
	return queuedWithin(t, c, key, n, 10*time.Second)
}

// queuedWithin is queued, waiting up to d.
func queuedWithin(t *testing.T, c *api.Client, key string, n int, d time.Duration) []*api.KVPair {
	t.Helper()
	var pairs api.KVPairs
	consultest.Eventually(t, d, "contender keys in the queue", func() bool {
		var err error
		pairs, _, err = c.KV().List(key+".queue/", &api.QueryOptions{RequireConsistent: true})
		return err == nil && len(pairs) == n
	})
	return pairs
}

// A release hands the key to the waiter of another process in one consensus
// write, and the waiter holds it without a write of its own: the two send
// one write between them, and Consul applies one entry to its log. The
// waiter's lease's
// token is the index of that write, its session holds the key with its own
// value, and its contender key is gone. A waiter of one session uses one
// contender key name at every turn.
func TestReleaseHandsTheKeyOverInOneWrite(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	ctx := context.Background()
	holderClient, holderWrites := consultest.CountingClientOf(t, agent)
	waiterClient, waiterWrites := consultest.CountingClientOf(t, agent)
	holder := newLocker(t, holderClient)
	waiter := newLocker(t, waiterClient, consullock.WithAcquireTimeout(time.Minute),
		consullock.WithValue(func() []byte { return []byte("the waiter's") }))
	writes := func() int64 { return holderWrites.Count() + waiterWrites.Count() }
	const rounds = 20
	var sent int64
	entries := make([]uint64, 0, rounds)
	names := map[string]bool{}
	for range rounds {
		held, err := holder.Acquire(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *consullock.Lease, 1)
		go func() {
			l, err := waiter.Acquire(ctx, "k")
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		names[queued(t, direct, "locks/ephemeral/k", 1)[0].Key] = true
		consultest.Eventually(t, 5*time.Second, "the holder sees the waiter in line", func() bool { return consullock.KnowsWaiter(held) })
		before, wrote := raftIndex(t, direct), writes()
		if err := held.Release(ctx); err != nil {
			t.Fatal(err)
		}
		l := <-got
		if l == nil {
			t.FailNow()
		}
		sent += writes() - wrote
		entries = append(entries, raftIndex(t, direct)-before)
		pair, _, err := direct.KV().Get("locks/ephemeral/k", &api.QueryOptions{RequireConsistent: true})
		if err != nil || pair == nil || pair.Session != l.Session() || pair.ModifyIndex != l.Token() || string(pair.Value) != "the waiter's" {
			t.Fatalf("after the handoff the key is %+v (%v); the lease has session %s, token %d", pair, err, l.Session(), l.Token())
		}
		if l.Token() <= held.Token() {
			t.Fatalf("token %d after %d", l.Token(), held.Token())
		}
		queued(t, direct, "locks/ephemeral/k", 0)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if sent != rounds {
		t.Fatalf("%d writes sent from a release to the waiter holding the key, over %d handoffs; want one each", sent, rounds)
	}
	// Consul writes on its own too (a young leader's setup, coordinates):
	// a few handoffs see an entry more, but most see only their own.
	slices.Sort(entries)
	if median := entries[rounds/2]; median != 1 {
		t.Fatalf("a handoff's median is %d entries in Consul's log, want 1 (all: %v)", median, entries)
	}
	// Each name deleted leaves Consul a tombstone that every list of the
	// key reads until it is reaped (15 minutes): one session, one name.
	if len(names) != 1 {
		t.Fatalf("the waiter's %d turns in line used %d contender key names, want one: %v", rounds, len(names), names)
	}
}

// A waiter whose session Consul invalidated while it waited in line queues
// again with a new session and gets the lock when it is released: no error
// (the fair queue used to fail with "the contender key left the queue").
func TestQueuedWaiterOutlivesItsSession(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	ctx := context.Background()
	holder := newLocker(t, consultest.ClientOf(t, agent))
	waiter := newLocker(t, consultest.ClientOf(t, agent), consullock.WithAcquireTimeout(time.Minute))
	held, err := holder.Acquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := waiter.Acquire(ctx, "k")
		if err == nil {
			err = l.Release(ctx)
		}
		got <- err
	}()
	first := queued(t, direct, "locks/ephemeral/k", 1)[0]
	if _, err := direct.Session().Destroy(first.Session, nil); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 10*time.Second, "the waiter queued again with a new session", func() bool {
		pairs, _, err := direct.KV().List("locks/ephemeral/k.queue/", &api.QueryOptions{RequireConsistent: true})
		return err == nil && len(pairs) == 1 && pairs[0].Session != first.Session
	})
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the waiter whose session was destroyed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not get the lock within 10 s of its release")
	}
}

// Waiters that give up (their acquire timeout passes) at every moment
// around a release leave the line: the key never stays with a waiter that
// left, and the next waiter gets it.
func TestWaitersThatGiveUpLeaveTheLine(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	ctx := context.Background()
	holder := newLocker(t, consultest.ClientOf(t, agent))
	// The quitter's timeout is long enough for both waiters to queue on a
	// busy machine (CI runs packages side by side on 2 cores).
	const timeout = 400 * time.Millisecond
	quitter := newLocker(t, consultest.ClientOf(t, agent), consullock.WithAcquireTimeout(timeout))
	patient := newLocker(t, consultest.ClientOf(t, agent), consullock.WithAcquireTimeout(time.Minute))
	gaveUp, missed := 0, 0
	for i := range 20 {
		held, err := holder.Acquire(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		quit := make(chan error, 1)
		start := time.Now()
		go func() {
			l, err := quitter.Acquire(ctx, "k")
			if err == nil {
				err = l.Release(ctx)
			}
			quit <- err
		}()
		got := make(chan *consullock.Lease, 1)
		raced := inLineBy(t, direct, "locks/ephemeral/k", 1, start.Add(timeout))
		go func() {
			l, err := patient.Acquire(ctx, "k")
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		raced = raced && inLineBy(t, direct, "locks/ephemeral/k", 2, start.Add(timeout))
		if raced {
			// Release around the moment the quitter gives up: from 0.6 to
			// 1.35 of its timeout after it began.
			release := start.Add(timeout * time.Duration(60+4*i) / 100)
			time.Sleep(time.Until(release)) // the moment of the release, not a wait for a condition
		} else {
			missed++ // the machine was too slow to queue both in time: no race this round
		}
		if err := held.Release(ctx); err != nil {
			t.Fatal(err)
		}
		switch err := <-quit; {
		case err == nil:
		case errors.Is(err, consullock.ErrNotAcquired):
			if raced {
				gaveUp++
			}
		default:
			t.Fatalf("the quitter: %v", err)
		}
		l := <-got
		if l == nil {
			t.FailNow()
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		consultest.Eventually(t, 5*time.Second, "the key free and the line empty", func() bool {
			keys, _, err := direct.KV().Keys("locks/ephemeral/k", "", &api.QueryOptions{RequireConsistent: true})
			return err == nil && len(keys) == 0
		})
	}
	raced := 20 - missed
	t.Logf("the quitter gave up %d times in %d rounds that raced (%d of 20 too slow to queue both waiters in time)", gaveUp, raced, missed)
	switch {
	case raced < 8:
		t.Fatalf("only %d of 20 rounds queued both waiters within the quitter's %v", raced, timeout)
	case gaveUp == 0 || gaveUp == raced:
		t.Fatalf("the quitter gave up %d times in %d: the releases missed the moment they were meant to race", gaveUp, raced)
	}
}

// inLineBy reports whether key's line holds n contender keys before until.
func inLineBy(t *testing.T, c *api.Client, key string, n int, until time.Time) bool {
	t.Helper()
	for time.Now().Before(until) {
		pairs, _, err := c.KV().List(key+".queue/", &api.QueryOptions{RequireConsistent: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(pairs) == n {
			return true
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	return false
}

// EphemeralLocks of different processes wait in line too: a waiter is
// handed the key by the holder's Release, after one write of its own (the
// enqueue), and holds it with its own value.
func TestEphemeralLockWaitersAreHandedTheKey(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	ctx := context.Background()
	name := "k"
	holder := newLock(t, consultest.ClientOf(t, agent), name)
	if err := holder.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	counts := &attemptCount{}
	waiter := newLock(t, consultest.ClientOf(t, agent), name, consullock.WithAcquireTimeout(time.Minute), consullock.WithObserver(counts))
	got := make(chan error, 1)
	go func() { got <- waiter.Acquire(ctx) }()
	queued(t, direct, holder.Key(), 1)
	consultest.Eventually(t, 5*time.Second, "the holder sees the waiter in line", func() bool { return consullock.LockKnowsWaiter(holder) })
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	defer waiter.Release(ctx)
	pair, _, err := direct.KV().Get(waiter.Key(), &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair == nil || pair.Session != waiter.Session() || pair.ModifyIndex != waiter.Token() {
		t.Fatalf("the key is %+v (%v); the waiter has session %s, token %d", pair, err, waiter.Session(), waiter.Token())
	}
	if h, err := consullock.ParseHolder(pair.Value); err != nil || h.PID == 0 || !strings.Contains(string(pair.Value), "locked_at") {
		t.Fatalf("the handed key's value %q is not the waiter's lock value (%v)", pair.Value, err)
	}
	// Two writes: the take that found the key held, then the enqueue.
	if a := counts.perAcquire(); a > 2 {
		t.Fatalf("%.0f writes to acquire, want at most 2 (a take, an enqueue)", a)
	}
}

// More waiters of different processes than watch the line with queries of
// their own (96) all get the lock in turn: those farther back hold no
// blocking query, so that a host's waiters stay within the agent's limit
// of connections per client address.
func TestFarBackWaitersHoldNoQuery(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	_, proxy := proxiedClient(t, agent.HTTPAddr())
	const waiters = 120
	holder := newLocker(t, clientAt(t, proxy.Addr()))
	ctx := context.Background()
	held, err := holder.Acquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var d overlapDetector
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the waiters' Lockers close, before the test ends: no t.Error after it
	for range waiters {
		lk := newLocker(t, clientAt(t, proxy.Addr()), consullock.WithAcquireTimeout(time.Minute))
		wg.Go(func() {
			if err := lk.Hold(ctx, "k", func(context.Context) error { d.section(2 * time.Millisecond); return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	// 120 sessions and enqueues, each on a connection of its own, while
	// those in line open their watches: 3 s alone, past 10 s in a loaded
	// CI run.
	queuedWithin(t, consultest.ClientOf(t, agent), "locks/ephemeral/k", waiters, 45*time.Second)
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	_, most := proxy.BlockingInFlight()
	if d.overlaps.Load() != 0 || d.entries.Load() != waiters {
		t.Fatalf("%d entries, %d overlaps; want %d and 0", d.entries.Load(), d.overlaps.Load(), waiters)
	}
	if most >= waiters {
		t.Fatalf("%d blocking queries at once for %d waiters: the waiters far back must hold none", most, waiters)
	}
	t.Logf("%d waiters of as many processes: at most %d blocking queries at once", waiters, most)
}

// A head of the line that knows who comes next watches the key alone. When
// Consul invalidates its session (its contender key goes with it) and the
// holder hands the key past it, the head reads the line and queues again
// with a new session at once: it is no longer in line, and waiting for a
// change of the key would leave it waiting for as long as others keep
// coming.
func TestPassedOverHeadQueuesAgain(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	ctx := context.Background()
	const key = "locks/ephemeral/k"
	hc, proxy := proxiedClient(t, agent.HTTPAddr())
	var keyOnly atomic.Bool // the head watches the key alone
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		q := r.URL.Query()
		if r.Method == http.MethodGet && r.URL.Path == "/v1/kv/"+key && q.Has("index") && !q.Has("recurse") {
			keyOnly.Store(true)
		}
		return faultproxy.Pass, false
	})
	acquire := func(c *api.Client) <-chan acquired {
		got := make(chan acquired, 1)
		lk := newLocker(t, c, consullock.WithAcquireTimeout(time.Minute))
		go func() {
			l, err := lk.Acquire(ctx, "k")
			got <- acquired{l, err}
		}()
		return got
	}
	holder := mustLease(t, newLocker(t, consultest.ClientOf(t, agent)), "k")
	first := acquire(consultest.ClientOf(t, agent))
	queued(t, direct, key, 1)
	head := acquire(hc)
	headSession := newest(queued(t, direct, key, 2))
	next := acquire(consultest.ClientOf(t, agent))
	nextSession := newest(queued(t, direct, key, 3))
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l := leaseWithin(t, first, 10*time.Second, "the first waiter")
	consultest.Eventually(t, 10*time.Second, "the new head watches the key alone", keyOnly.Load)
	if _, err := direct.Session().Destroy(headSession, nil); err != nil {
		t.Fatal(err)
	}
	queued(t, direct, key, 1)
	if err := l.Release(ctx); err != nil { // hands the key past the head, to next
		t.Fatal(err)
	}
	n := leaseWithin(t, next, 10*time.Second, "the waiter after the head")
	consultest.Eventually(t, 5*time.Second, "the passed-over head queues again with a new session", func() bool {
		pairs, _, err := direct.KV().List(key+".queue/", &api.QueryOptions{RequireConsistent: true})
		return err == nil && len(pairs) == 1 && pairs[0].Session != headSession && pairs[0].Session != nextSession
	})
	if err := n.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := leaseWithin(t, head, 10*time.Second, "the head that queued again").Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// acquired is the outcome of an Acquire run in a goroutine.
type acquired struct {
	l   *consullock.Lease
	err error
}

// leaseWithin waits up to d for the lease of an acquire that must succeed.
func leaseWithin(t *testing.T, c <-chan acquired, d time.Duration, what string) *consullock.Lease {
	t.Helper()
	select {
	case a := <-c:
		if a.err != nil {
			t.Fatalf("%s: %v", what, a.err)
		}
		return a.l
	case <-time.After(d):
		t.Fatalf("%s did not get the lock within %v", what, d)
		return nil
	}
}

// newest is the session of the contender that came last: a list is in key
// order, not in order of arrival.
func newest(line api.KVPairs) string {
	return slices.MaxFunc(line, func(a, b *api.KVPair) int { return cmp.Compare(a.CreateIndex, b.CreateIndex) }).Session
}
