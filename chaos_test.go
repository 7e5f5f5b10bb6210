package consullock_test

import (
	"context"
	"errors"
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
	if took < delay || took > 2*ttl+delay+4*time.Second {
		t.Fatalf("lock free %v after its holder was killed, want between the lock delay %v and 2 x TTL + lock delay (%v)", took, delay, 2*ttl+delay)
	}
	t.Logf("holder killed with SIGKILL; lock free again %v later (TTL %v, lock delay %v)", took.Round(time.Millisecond), ttl, delay)
	l.Release(context.Background())
}

// A holder process frozen (SIGSTOP) for longer than its TTL, while another
// takes the lock, learns of the loss before it does any more work once
// resumed, and the successor's data stays as the successor wrote it.
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
	if len(after) == 0 || !strings.HasPrefix(after[0], "lost") {
		t.Fatalf("after resuming the holder printed %q, want it to report the loss first", after)
	}
	pair, _, err := c.KV().Get(data, nil)
	if err != nil || pair == nil || string(pair.Value) != "successor" {
		t.Fatalf("data = %v (%v): the frozen holder overwrote its successor", pair, err)
	}
	t.Logf("holder frozen %v; successor took the lock; on resume the holder said %q", resumed.Sub(frozen).Round(time.Millisecond), after[0])
	l.Release(context.Background())
}

// write is a fenced write that Consul acknowledged.
type write struct {
	key   string
	token uint64
}

// TestHistoryUnderFaults runs workers, each a Locker of its own as separate
// processes would have, against a 3-server cluster while the leader is
// killed and restarted, the agent some workers use is frozen and thawed, and
// a proxy delays every request of the others by 2 ms and breaks a tenth. Each holder makes
// fenced writes of its token to keys of their own; afterwards the history is
// checked: every acknowledged write is in Consul, and in Consul's commit order
// the tokens never go down, which is to say no two holders overlapped.
func TestHistoryUnderFaults(t *testing.T) {
	t.Parallel()
	cl := consultest.Cluster(t, 3)
	ctx := context.Background()
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	followers := cl.Followers(leader)
	proxied, proxy := proxiedClient(t, followers[0].HTTPAddr())
	proxy.SetFaults(0.1, faultproxy.Status500, faultproxy.Status429, faultproxy.ResetBefore, faultproxy.ResetAfter)
	proxy.SetLatency(2 * time.Millisecond)
	direct := consultest.ClientOf(t, followers[1])
	name, prefix := lockName(t, "k"), "hist/"+lockName(t, "")

	var (
		mu       sync.Mutex
		acked    []write
		cycles   int
		failures []string
	)
	stop := time.Now().Add(25 * time.Second)
	var wg sync.WaitGroup
	for w := range 4 {
		c := proxied
		if w%2 == 1 {
			c = direct
		}
		wg.Go(func() {
			lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithAcquireTimeout(20*time.Second))
			if err != nil {
				t.Error(err)
				return
			}
			defer lk.Close(ctx)
			for n := 0; time.Now().Before(stop); n++ {
				l, err := lk.Acquire(ctx, name)
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				for i := range 3 {
					key := fmt.Sprintf("%s%d-%d-%d", prefix, w, n, i)
					err := l.PutFenced(ctx, key, []byte(strconv.FormatUint(l.Token(), 10)))
					if errors.Is(err, consullock.ErrLockLost) {
						break
					}
					if err == nil {
						mu.Lock()
						acked = append(acked, write{key, l.Token()})
						mu.Unlock()
					}
				}
				l.Release(ctx)
				mu.Lock()
				cycles++
				mu.Unlock()
			}
		})
	}

	time.Sleep(4 * time.Second) // the faults start once the workers run
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	followers[1].Freeze()
	time.Sleep(4 * time.Second) // the agent stays frozen this long
	followers[1].Thaw()
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	checkHistory(t, direct, prefix, acked)
	t.Logf("%d lock cycles by 4 workers; faults: 1 leader kill and restart, 1 agent frozen 4s, proxy (+2 ms each) %v; %d acquires failed; %d fenced writes acknowledged, 0 lost, 0 overlaps",
		cycles, proxy.Counts(), len(failures), len(acked))
	if len(failures) > 0 {
		t.Logf("first failed acquire: %s", failures[0])
	}
	if _, err := direct.KV().DeleteTree(prefix, nil); err != nil {
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
