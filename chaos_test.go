package consullock_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// A holder process killed with SIGKILL leaves its lock to Consul: free
// again within twice the session TTL plus the lock delay, never earlier than
// the lock delay.
func TestKilledHolderFreesTheLockInTime(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl, delay = 10 * time.Second, 3 * time.Second
	name, data := lockName(t, "k"), "locks/data/"+lockName(t, "d")
	t.Cleanup(func() { c.KV().Delete(data, nil) })
	h := startHolder(t, consultest.Shared(t).HTTPAddr(), name, ttl, delay, data)
	consultest.Eventually(t, 10*time.Second, "the holder process works under the lock", func() bool {
		return h.printed("wrote", time.Time{})
	})
	h.cmd.Process.Kill()
	killed := time.Now()
	<-h.done

	lk := newLocker(t, c, consullock.WithAcquireTimeout(2*ttl+delay+10*time.Second))
	l, err := lk.Acquire(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	// Consul frees the key by 2 x TTL after the last renewal (before the
	// kill), then keeps it for the lock delay; the successor polls for the
	// end of a lock delay at most every 500 ms, and the machine may be busy.
	if took < delay || took > 2*ttl+delay+2*time.Second {
		t.Fatalf("lock free %v after its holder was killed, want between the lock delay %v and 2 x TTL + lock delay (%v)", took, delay, 2*ttl+delay)
	}
	t.Logf("holder killed with SIGKILL; lock free again %v later (TTL %v, lock delay %v)", took.Round(time.Millisecond), ttl, delay)
	l.Release(context.Background())
}

// A holder process frozen (SIGSTOP) for longer than its TTL, while another
// takes the lock, learns of the loss before it does any more work once
// resumed; a fenced write it makes all the same is refused by Consul, and
// the successor's data stays as the successor wrote it.
func TestFrozenHolderStopsBeforeWorkingAgain(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl = 10 * time.Second
	name, data := lockName(t, "k"), "locks/data/"+lockName(t, "d")
	t.Cleanup(func() { c.KV().Delete(data, nil) })
	h := startHolder(t, consultest.Shared(t).HTTPAddr(), name, ttl, 0, data)
	consultest.Eventually(t, 10*time.Second, "the holder process works under the lock", func() bool {
		return h.printed("wrote", time.Time{})
	})
	syscall.Kill(h.cmd.Process.Pid, syscall.SIGSTOP)
	frozen := time.Now()

	lk := newLocker(t, c, consullock.WithAcquireTimeout(3*ttl))
	l, err := lk.Acquire(context.Background(), name)
	if err != nil {
		t.Fatalf("the frozen holder's lock was not freed: %v", err)
	}
	if err := l.PutFenced(context.Background(), data, []byte("successor")); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	syscall.Kill(h.cmd.Process.Pid, syscall.SIGCONT)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed holder did not stop within 10s")
	}
	after := h.after(resumed)
	if len(after) != 2 || !strings.HasPrefix(after[0], "lost") || after[1] != "zombie write refused" {
		t.Fatalf("after resuming the holder printed %q, want it to report the loss first, then its fenced write refused", after)
	}
	pair, _, err := c.KV().Get(data, nil)
	if err != nil || pair == nil || string(pair.Value) != "successor" {
		t.Fatalf("data = %v (%v): the frozen holder overwrote its successor", pair, err)
	}
	t.Logf("holder frozen %v; successor took the lock; on resume the holder said %q, then %q", resumed.Sub(frozen).Round(time.Millisecond), after[0], after[1])
	l.Release(context.Background())
}

// write is a fenced write that Consul acknowledged.
type write struct {
	key   string
	token uint64
}

// soak makes TestHistoryUnderFaults run longer, with a round of faults
// every 12 s or so: go test -run TestHistoryUnderFaults -soak 10m -timeout 0 .
var soak = flag.Duration("soak", 0, "how long TestHistoryUnderFaults runs (0: 25s, one round of faults)")

// TestHistoryUnderFaults runs workers, each a Locker of its own as separate
// processes would have, against a 3-server cluster while the leader is
// killed and restarted, the agent some workers use is frozen and thawed, and
// a proxy delays every request of the others by 2 ms and breaks a tenth.
// Each holder makes fenced writes of its token to keys of their own, and
// every operation goes into a history. Afterwards, every acknowledged write
// must be in Consul, in Consul's commit order the tokens must never go
// down, and porcupine must find the history linearizable against a model
// of a fenced lock: no two holders overlapped, as Consul or the workers'
// clocks saw it.
func TestHistoryUnderFaults(t *testing.T) {
	t.Parallel()
	cl := consultest.Cluster(t, 3)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	followers := cl.Followers(leader)
	_, proxy := proxiedClient(t, followers[0].HTTPAddr())
	proxy.SetFaults(0.1, faultproxy.Status500, faultproxy.Status429, faultproxy.ResetBefore, faultproxy.ResetAfter)
	proxy.SetLatency(2 * time.Millisecond)
	frozen := followers[1]
	// Each worker has a client of its own, as a process of its own would:
	// the lock passes between them by handoffs in Consul.
	addrs := []string{proxy.Addr(), frozen.HTTPAddr(), proxy.Addr(), frozen.HTTPAddr()}
	r := runHistory(t, consultest.ClientOf(t, frozen), addrs, func(ctx context.Context, round int) {
		injectFaults(t, ctx, cl, frozen)
	})
	t.Logf("%d lock cycles by 4 workers in %v; faults: %d rounds of a leader kill and restart and an agent frozen 4s, proxy (+2 ms each) %v; %d holds lost, %d acquires failed; %d fenced writes acknowledged, 0 lost, 0 overlaps",
		r.cycles, r.ran, r.rounds, proxy.Counts(), r.lost, len(r.failures), len(r.acked))
	if len(r.failures) > 0 {
		t.Logf("first failed acquire: %s", r.failures[0])
	}
}

// TestHistoryBehindClientAgents is TestHistoryUnderFaults as production runs
// it: the workers reach a 3-server cluster through two client agents, two
// workers on each, while rounds of faults kill and restart the leader, kill
// one client agent with SIGKILL and restart it 3 s later, and freeze the
// other one, for 20 s (longer than the sessions' TTL, so that its holders
// lose their locks to the others) or, every other round, for 4 s.
func TestHistoryBehindClientAgents(t *testing.T) {
	t.Parallel()
	cl := consultest.Topology(t, consulagent.Topology{Servers: 3, Clients: 2})
	killed, frozen := cl.Clients[0], cl.Clients[1]
	addrs := []string{killed.HTTPAddr(), frozen.HTTPAddr(), killed.HTTPAddr(), frozen.HTTPAddr()}
	r := runHistory(t, consultest.ClientOf(t, cl.Servers[0]), addrs, func(ctx context.Context, round int) {
		injectClientAgentFaults(t, ctx, cl, killed, frozen, round)
	})
	t.Logf("%d lock cycles by 4 workers behind 2 client agents in %v; faults: %d rounds of a leader kill and restart, a client agent killed for 3 s and one frozen for 20 s or 4 s; %d holds lost, %d acquires failed; %d fenced writes acknowledged, 0 lost, 0 overlaps",
		r.cycles, r.ran, r.rounds, r.lost, len(r.failures), len(r.acked))
	if len(r.failures) > 0 {
		t.Logf("first failed acquire: %s", r.failures[0])
	}
}

// historyRun is what the workers of a history test did.
type historyRun struct {
	hist *lockHistory
	ran  time.Duration

	mu       sync.Mutex
	acked    []write
	cycles   int
	failures []string
	lost     int // holds that ended lost, or whose release failed
	rounds   int
}

// runHistory runs a worker for each of addrs, each with a client of its
// own, on one lock, for 25 s or -soak, while faults runs round after round;
// then it checks the history (through check) and deletes its keys.
func runHistory(t *testing.T, check *api.Client, addrs []string, faults func(ctx context.Context, round int)) *historyRun {
	t.Helper()
	ctx := context.Background()
	name, prefix := lockName(t, "k"), "hist/"+lockName(t, "")
	r := &historyRun{hist: newLockHistory(), ran: 25 * time.Second}
	if *soak > r.ran {
		r.ran = *soak
	}
	stop := time.Now().Add(r.ran)
	var wg sync.WaitGroup
	for w, addr := range addrs {
		c := clientAt(t, addr)
		wg.Go(func() { r.work(t, ctx, w, c, name, prefix, stop) })
	}
	for r.rounds == 0 || time.Until(stop) > 15*time.Second {
		faults(ctx, r.rounds)
		r.rounds++
	}
	wg.Wait()
	checkHistory(t, check, prefix, r.acked)
	r.hist.check(t, time.Minute)
	if _, err := check.KV().DeleteTree(prefix, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// work is one worker: lock cycles until stop, each with three fenced writes,
// every operation recorded in the history.
func (r *historyRun) work(t *testing.T, ctx context.Context, w int, c *api.Client, name, prefix string, stop time.Time) {
	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithAcquireTimeout(20*time.Second))
	if err != nil {
		t.Error(err)
		return
	}
	defer lk.Close(ctx)
	for n := 0; time.Now().Before(stop); n++ {
		call := r.hist.now()
		l, err := lk.Acquire(ctx, name)
		if err != nil {
			r.mu.Lock()
			r.failures = append(r.failures, err.Error())
			r.mu.Unlock()
			continue
		}
		r.hist.add(w, lockInput{op: opAcquire}, lockOutput{token: l.Token()}, call, r.hist.now())
		r.writeFenced(ctx, w, l, fmt.Sprintf("%s%d-%d-", prefix, w, n))
		r.release(ctx, w, l, call)
		r.mu.Lock()
		r.cycles++
		r.mu.Unlock()
	}
}

// writeFenced makes up to three fenced writes of l's token, and stops at the
// first that fails.
func (r *historyRun) writeFenced(ctx context.Context, w int, l *consullock.Lease, keyPrefix string) {
	tok := l.Token()
	for i := range 3 {
		key := keyPrefix + strconv.Itoa(i)
		call := r.hist.now()
		err := l.PutFenced(ctx, key, []byte(strconv.FormatUint(tok, 10)))
		if err == nil || errors.Is(err, consullock.ErrLockLost) {
			r.hist.add(w, lockInput{op: opWrite, token: tok}, lockOutput{ok: err == nil}, call, r.hist.now())
		} // other errors leave the write's outcome unknown: the final read checks it
		if err != nil {
			return
		}
		r.mu.Lock()
		r.acked = append(r.acked, write{key, tok})
		r.mu.Unlock()
	}
}

// release gives l back and records how its hold ended; acquired is when its
// acquire began.
func (r *historyRun) release(ctx context.Context, w int, l *consullock.Lease, acquired int64) {
	tok := l.Token()
	call := r.hist.now()
	err := l.Release(ctx)
	if err != nil || l.Err() != nil {
		r.mu.Lock()
		r.lost++
		r.mu.Unlock()
	}
	switch {
	case err != nil: // it ends some time, by a retry or its maximum lifespan
		r.hist.add(w, lockInput{op: opUncertainEnd, token: tok}, lockOutput{}, acquired, forever)
	case l.Err() != nil: // lost some time after its acquire began
		r.hist.add(w, lockInput{op: opUncertainEnd, token: tok}, lockOutput{}, acquired, r.hist.now())
	default:
		r.hist.add(w, lockInput{op: opRelease, token: tok}, lockOutput{}, call, r.hist.now())
	}
}

// injectFaults lets the workers run for 4 s, kills the leader, freezes the
// agent frozen for 4 s once a new leader is elected (unless it was the one
// killed), and restarts the old leader.
func injectFaults(t *testing.T, ctx context.Context, cl *consulagent.Cluster, frozen *consulagent.Agent) {
	t.Helper()
	time.Sleep(4 * time.Second) // the workers run undisturbed this long
	leader := killLeader(t, ctx, cl)
	if leader != frozen {
		frozen.Freeze()
		time.Sleep(4 * time.Second) // the agent stays frozen this long
		frozen.Thaw()
	}
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
}

// injectClientAgentFaults lets the workers run for 4 s, kills the leader and
// waits for the next, kills the client agent killed and restarts it 3 s
// later, freezes the client agent frozen for 20 s (4 s in odd rounds), and
// restarts the old leader; it returns once every agent is ready again.
func injectClientAgentFaults(t *testing.T, ctx context.Context, cl *consulagent.Cluster, killed, frozen *consulagent.Agent, round int) {
	t.Helper()
	time.Sleep(4 * time.Second) // the workers run undisturbed this long
	leader := killLeader(t, ctx, cl)
	killed.Kill()
	time.Sleep(3 * time.Second) // the client agent stays down this long
	if err := killed.Restart(); err != nil {
		t.Fatal(err)
	}
	freeze := 20 * time.Second
	if round%2 == 1 {
		freeze = 4 * time.Second
	}
	frozen.Freeze()
	time.Sleep(freeze) // the client agent stays frozen this long
	frozen.Thaw()
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, a := range []*consulagent.Agent{leader, killed} {
		if err := a.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// killLeader kills the cluster's leader, once every server votes again
// (see WaitHealthy), waits until another is elected, and returns the killed
// one.
func killLeader(t *testing.T, ctx context.Context, cl *consulagent.Cluster) *consulagent.Agent {
	t.Helper()
	if err := cl.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return leader
}

// checkHistory checks the fenced writes under prefix against the writes that
// were acknowledged: none lost, and tokens non-decreasing in commit order.
func checkHistory(t *testing.T, c *api.Client, prefix string, acked []write) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatal("no fenced write was acknowledged: the history checks nothing")
	}
	pairs, _, err := c.KV().List(prefix, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]uint64{}
	for _, p := range pairs {
		tok, err := strconv.ParseUint(string(p.Value), 10, 64)
		if err != nil {
			t.Fatalf("history key %s holds %q", p.Key, p.Value)
		}
		stored[p.Key] = tok
	}
	for _, w := range acked {
		if tok, ok := stored[w.key]; !ok || tok != w.token {
			t.Fatalf("acknowledged fenced write %s (token %d) is not in Consul", w.key, w.token)
		}
	}
	slices.SortFunc(pairs, func(a, b *api.KVPair) int { return int(a.CreateIndex) - int(b.CreateIndex) })
	var last uint64
	for _, p := range pairs {
		tok := stored[p.Key]
		if tok < last {
			t.Fatalf("fenced write %s with token %d committed after one with token %d: two holders overlapped", p.Key, tok, last)
		}
		last = tok
	}
}
