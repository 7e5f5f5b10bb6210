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
	direct := consultest.ClientOf(t, frozen)
	name, prefix := lockName(t, "k"), "hist/"+lockName(t, "")

	var (
		mu       sync.Mutex
		acked    []write
		cycles   int
		failures []string
	)
	hist := newLockHistory()
	run := 25 * time.Second
	if *soak > run {
		run = *soak
	}
	stop := time.Now().Add(run)
	var wg sync.WaitGroup
	for w := range 4 {
		// Each worker has a client of its own, as a process of its own
		// would: the lock passes between them by handoffs in Consul.
		c := clientAt(t, frozen.HTTPAddr())
		if w%2 == 0 {
			c = clientAt(t, proxy.Addr())
		}
		wg.Go(func() {
			lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithAcquireTimeout(20*time.Second))
			if err != nil {
				t.Error(err)
				return
			}
			defer lk.Close(ctx)
			for n := 0; time.Now().Before(stop); n++ {
				call := hist.now()
				l, err := lk.Acquire(ctx, name)
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				tok := l.Token()
				hist.add(w, lockInput{op: opAcquire}, lockOutput{token: tok}, call, hist.now())
				for i := range 3 {
					key := fmt.Sprintf("%s%d-%d-%d", prefix, w, n, i)
					wcall := hist.now()
					err := l.PutFenced(ctx, key, []byte(strconv.FormatUint(tok, 10)))
					if err == nil || errors.Is(err, consullock.ErrLockLost) {
						hist.add(w, lockInput{op: opWrite, token: tok}, lockOutput{ok: err == nil}, wcall, hist.now())
					} // other errors leave the write's outcome unknown: the final read checks it
					if err != nil {
						break
					}
					mu.Lock()
					acked = append(acked, write{key, tok})
					mu.Unlock()
				}
				rcall := hist.now()
				err = l.Release(ctx)
				switch {
				case err != nil: // it ends some time, by a retry or its maximum lifespan
					hist.add(w, lockInput{op: opUncertainEnd, token: tok}, lockOutput{}, call, forever)
				case l.Err() != nil: // lost some time after its acquire began
					hist.add(w, lockInput{op: opUncertainEnd, token: tok}, lockOutput{}, call, hist.now())
				default:
					hist.add(w, lockInput{op: opRelease, token: tok}, lockOutput{}, rcall, hist.now())
				}
				mu.Lock()
				cycles++
				mu.Unlock()
			}
		})
	}

	rounds := 0
	for rounds == 0 || time.Until(stop) > 15*time.Second {
		injectFaults(t, ctx, cl, frozen)
		rounds++
	}
	wg.Wait()

	checkHistory(t, direct, prefix, acked)
	hist.check(t, time.Minute)
	t.Logf("%d lock cycles by 4 workers in %v; faults: %d rounds of a leader kill and restart and an agent frozen 4s, proxy (+2 ms each) %v; %d acquires failed; %d fenced writes acknowledged, 0 lost, 0 overlaps",
		cycles, run, rounds, proxy.Counts(), len(failures), len(acked))
	if len(failures) > 0 {
		t.Logf("first failed acquire: %s", failures[0])
	}
	if _, err := direct.KV().DeleteTree(prefix, nil); err != nil {
		t.Fatal(err)
	}
}

// injectFaults lets the workers run for 4 s, kills the leader, freezes the
// agent frozen for 4 s once a new leader is elected (unless it was the one
// killed), and restarts the old leader.
func injectFaults(t *testing.T, ctx context.Context, cl *consulagent.Cluster, frozen *consulagent.Agent) {
	t.Helper()
	time.Sleep(4 * time.Second) // the workers run undisturbed this long
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
	if leader != frozen {
		frozen.Freeze()
		time.Sleep(4 * time.Second) // the agent stays frozen this long
		frozen.Thaw()
	}
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
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
