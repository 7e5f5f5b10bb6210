package consullock_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

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

// One process holds 5,000 watched leases for three session TTLs, on an
// agent with Consul's default limits: none is lost (a renewal refused for
// want of a connection would lose them all), a deleted key among them is
// noticed within a second, and a few blocking queries watch them all.
func TestFiveThousandWatchedLeases(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	direct := consultest.ClientOf(t, agent)
	c, proxy := proxiedClient(t, agent.HTTPAddr())
	const ttl = consullock.MinLockTimeout
	lk := newLocker(t, c, consullock.WithSessionTTL(ttl), consullock.WithAcquireTimeout(time.Minute))
	ctx := context.Background()
	const goroutines, keys = 64, 5000
	leases := make([]*consullock.Lease, keys)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range goroutines {
		wg.Go(func() {
			for k := g; k < keys; k += goroutines {
				l, err := lk.Acquire(ctx, fmt.Sprintf("many/%04d", k))
				if err != nil {
					t.Errorf("acquire key %d: %v", k, err)
					return
				}
				leases[k] = l
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	acquired := time.Since(start)
	deadline := time.After(3 * ttl)
	victim := leases[keys/2]
	deletedAt := time.Now()
	if _, err := direct.KV().Delete(victim.Key(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.Lost():
	case <-time.After(time.Second):
		t.Fatal("a deleted key among 5,000 watched was not noticed within a second")
	}
	noticed := time.Since(deletedAt)
	<-deadline
	for i, l := range leases {
		if l != victim && l.Err() != nil {
			t.Fatalf("lease %d lost after %v: %v", i, time.Since(start), l.Err())
		}
	}
	_, most := proxy.BlockingInFlight()
	if most > 16 {
		t.Fatalf("%d blocking queries in flight at once for %d leases", most, keys)
	}
	// Released by as many goroutines as acquired them: each Release is
	// bounded by 10 s from its call, in-process queueing for one of the
	// Locker's 64 requests in flight included, and 5,000 at once on a busy
	// CI machine (race detector, other packages' agents) took longer.
	start = time.Now()
	for g := range goroutines {
		wg.Go(func() {
			for k := g; k < keys; k += goroutines {
				if err := leases[k].Release(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if left, _, _ := direct.KV().Keys("locks/ephemeral/many/", "", nil); len(left) != 0 {
		t.Fatalf("%d keys left after releasing them all", len(left))
	}
	t.Logf("%d leases acquired in %v, held for %v (3 session TTLs) with none lost, released in %v; a deleted key noticed in %v; at most %d blocking queries at once",
		keys, acquired.Round(time.Millisecond), 3*ttl, time.Since(start).Round(time.Millisecond), noticed.Round(time.Millisecond), most)
}

// 500 EphemeralLocks, each with a session of its own and the default
// acquire timeout (one attempt), are held at once and released at once,
// within the agent's default 200 connections per client address, and leave
// nothing behind.
func TestFiveHundredEphemeralLocksAtOnce(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	c := consultest.ClientOf(t, agent)
	ctx := context.Background()
	const n = 500
	locks := make([]*consullock.EphemeralLock, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			l := newLock(t, c, fmt.Sprintf("many/%03d", i))
			if err := l.Acquire(ctx); err != nil {
				t.Errorf("acquire %d: %v", i, err)
				return
			}
			locks[i] = l
		})
	}
	wg.Wait()
	acquired := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}
	start = time.Now()
	for _, l := range locks {
		wg.Go(func() {
			if err := l.Release(ctx); err != nil {
				t.Errorf("release %s: %v", l.Key(), err)
			}
		})
	}
	wg.Wait()
	sessions, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, _, err := c.KV().Keys("locks/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 0 || len(keys) != 0 {
		t.Fatalf("left behind: %d sessions, %d keys", len(sessions), len(keys))
	}
	t.Logf("%d EphemeralLocks acquired at once in %v, released in %v, nothing left", n, acquired.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// 250 EphemeralLocks of one process wait for one key, each with a session
// of its own: all get it in turn, one at a time, though their waits share a
// few queries.
func TestManyWaitersOnOneKey(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	c := consultest.ClientOf(t, agent)
	const n = 250
	var d overlapDetector
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			if err := holdOnce(c, "one-key", 5*time.Minute, func() { d.section(time.Millisecond) }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d.overlaps.Load() != 0 || d.entries.Load() != n {
		t.Fatalf("%d entries, %d overlaps; want %d and 0", d.entries.Load(), d.overlaps.Load(), n)
	}
	t.Logf("%d waiters on one key all held it in turn in %v", n, time.Since(start).Round(time.Millisecond))
}

// 250 goroutines of one process wait for a semaphore of 2 slots, on an
// agent with the default limit of 200 connections per client address. The
// waiters share one blocking list of the slots: a query each held up to
// 240 connections at once, and the agent refused thousands of requests
// with 429 (32,588 GETs for 250 acquires in one probe).
func TestManySemaphoreWaitersShareOneQuery(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	c, proxy := proxiedClient(t, agent.HTTPAddr())
	const n, limit = 250, 2
	sem, err := newLocker(t, c, consullock.WithAcquireTimeout(5*time.Minute)).Semaphore("sem", limit)
	if err != nil {
		t.Fatal(err)
	}
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			l, err := sem.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			now := inside.Add(1)
			for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
			}
			time.Sleep(time.Millisecond) // the work under the semaphore
			inside.Add(-1)
			if err := l.Release(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > limit {
		t.Fatalf("%d holders at once, want at most %d", m, limit)
	}
	// The shared list, and the loss watches of the held slots (at most 8).
	if _, queries := proxy.BlockingInFlight(); queries > 9 {
		t.Fatalf("%d blocking queries in flight at once, want at most 9", queries)
	}
	t.Logf("%d waiters for %d slots all held one in turn in %v; %d GETs", n, limit, time.Since(start).Round(time.Millisecond), proxy.Requests(http.MethodGet, "/v1/kv/"))
}

// A held lease costs no goroutine of its own and little memory: 1,000
// leases held through one Locker add a handful of goroutines (the session's
// renewer, the shared watches). Not parallel: it counts the process's
// goroutines.
func TestGoroutinesAndMemoryPerLease(t *testing.T) {
	c := consultest.Client(t)
	lk := newLocker(t, c)
	ctx := context.Background()
	const keys = 1000
	warm, err := lk.Acquire(ctx, lockName(t, "warm-up"))
	if err != nil {
		t.Fatal(err)
	}
	goroutinesBefore, heapBefore := runtime.NumGoroutine(), heapInUse()
	leases := make([]*consullock.Lease, keys)
	for i := range leases {
		if leases[i], err = lk.Acquire(ctx, lockName(t, fmt.Sprintf("k%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	extra := runtime.NumGoroutine() - goroutinesBefore
	perLease := float64(heapInUse()-heapBefore) / keys
	for _, l := range append(leases, warm) {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if extra > 30 {
		t.Fatalf("%d more goroutines while %d leases are held, want a handful whatever the number of leases", extra, keys)
	}
	t.Logf("%d leases held: %d more goroutines, %.1f KB of heap per lease", keys, extra, perLease/1024)
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// 10,000 Hold cycles by 8 goroutines through a client configured as the
// README says (api.DefaultConfig with 72 idle connections kept) reuse their
// connections: almost no socket is left in TIME_WAIT.
func TestCyclesReuseConnections(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t)
	cfg := api.DefaultConfig()
	cfg.Address = agent.HTTPAddr()
	cfg.Transport.MaxIdleConnsPerHost = 72
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	lk := newLocker(t, c)
	port := agent.HTTPAddr()[strings.LastIndex(agent.HTTPAddr(), ":")+1:]
	before := socketsInTimeWait(t, port)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 1250 {
				if err := lk.Hold(context.Background(), fmt.Sprintf("tw/%d-%d", w, i%4), func(context.Context) error { return nil }); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	left := socketsInTimeWait(t, port) - before
	if left > 100 {
		t.Fatalf("%d sockets to the agent in TIME_WAIT after 10,000 cycles, want almost none", left)
	}
	t.Logf("10,000 cycles by 8 goroutines: %d more sockets to the agent in TIME_WAIT", left)
}

// socketsInTimeWait counts this host's TCP sockets in TIME_WAIT whose
// remote port is port (Linux).
func socketsInTimeWait(t *testing.T, port string) int {
	t.Helper()
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprintf(":%04X", p)
	n := 0
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("count sockets: %v", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && f[3] == "06" && strings.HasSuffix(f[2], suffix) {
				n++
			}
		}
	}
	return n
}
