package consullock_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

func TestHeldLockBlocksSecond(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	first := mustAcquire(t, c, name)

	second := newLock(t, c, name)
	ok, err := second.TryAcquire(context.Background())
	if ok || err != nil {
		t.Fatalf("TryAcquire on a held lock = (%v, %v), want (false, nil)", ok, err)
	}
	third := newLock(t, c, name)
	if err := third.Acquire(context.Background()); !errors.Is(err, consullock.ErrNotAcquired) {
		t.Fatalf("Acquire on a held lock = %v, want ErrNotAcquired", err)
	}
	if got := sessionsNamed(t, c, first.Key()); got != 1 {
		t.Fatalf("%d sessions for %s after two failed acquires, want only the holder's", got, first.Key())
	}

	if err := first.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := holderSession(t, c, first.Key()); s != "" {
		t.Fatalf("key still held by %s after Release", s)
	}
	mustAcquire(t, c, name)
}

func TestUnrelatedKeysAreIndependent(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	a := mustAcquire(t, c, lockName(t, "a"))
	b := mustAcquire(t, c, lockName(t, "b"))
	if a.Session() == b.Session() || holderSession(t, c, a.Key()) != a.Session() || holderSession(t, c, b.Key()) != b.Session() {
		t.Fatalf("locks on two keys not held independently: %s by %s, %s by %s", a.Key(), a.Session(), b.Key(), b.Session())
	}
}

// The maximum lifespan: a lock never released is freed by Consul after its
// LockTimeout (Consul may take up to twice that), and the late Release of the
// old holder does not remove the key from its new holder.
func TestLockExpiresAfterLockTimeout(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	const ttl = consullock.MinLockTimeout
	stale := mustAcquire(t, c, name, consullock.WithLockTimeout(ttl))
	acquiredAt := time.Now()

	next := newLock(t, c, name, consullock.WithAcquireTimeout(3*ttl))
	releaseAtEnd(t, next)
	if err := next.Acquire(context.Background()); err != nil {
		t.Fatalf("lock not freed within 3x its LockTimeout: %v", err)
	}
	took := time.Since(acquiredAt)
	if took < ttl || took > 2*ttl+2*time.Second {
		t.Fatalf("expired lock taken over after %v, want between %v and %v", took, ttl, 2*ttl)
	}
	t.Logf("lock with LockTimeout %v taken over %v after it was acquired", ttl, took.Round(time.Millisecond))

	if err := stale.Release(context.Background()); err != nil {
		t.Fatalf("late Release of an expired lock: %v", err)
	}
	if s := holderSession(t, c, next.Key()); s != next.Session() {
		t.Fatalf("late Release of the expired holder changed the key's holder to %q", s)
	}
}

func TestAcquireTimeoutBounds(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	mustAcquire(t, c, name)

	// A round trip to a loopback agent takes a few milliseconds, even with
	// -race on two cores; the bound leaves room for a loaded machine.
	const slack = 250 * time.Millisecond
	for _, timeout := range []time.Duration{0, 300 * time.Millisecond, time.Second} {
		l := newLock(t, c, name, consullock.WithAcquireTimeout(timeout))
		start := time.Now()
		err := l.Acquire(context.Background())
		took := time.Since(start)
		if !errors.Is(err, consullock.ErrNotAcquired) {
			t.Fatalf("timeout %v: Acquire = %v, want ErrNotAcquired", timeout, err)
		}
		if took < timeout || took > timeout+slack {
			t.Fatalf("timeout %v: Acquire gave up after %v, want within [%v, %v]", timeout, took, timeout, timeout+slack)
		}
		t.Logf("acquire timeout %v: gave up after %v (%v)", timeout, took.Round(time.Millisecond), err)
	}
}

// A waiter wakes on a blocking query when the holder releases, instead of
// sleeping between attempts as python-consul-lock does.
func TestWaiterTakesReleasedLockPromptly(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name)

	// The waiter goes through a proxy that counts its blocking queries.
	proxied, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	waiter := newLock(t, proxied, name, consullock.WithAcquireTimeout(30*time.Second))
	releaseAtEnd(t, waiter)
	acquired := make(chan time.Time, 1)
	errc := make(chan error, 1)
	go func() {
		err := waiter.Acquire(context.Background())
		acquired <- time.Now()
		errc <- err
	}()
	consultest.Eventually(t, 5*time.Second, "the waiter is in a blocking query", func() bool {
		return proxy.BlockingQueries() > 0
	})

	released := time.Now()
	if err := holder.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	handoff := (<-acquired).Sub(released)
	if err := <-errc; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	// A few milliseconds on an idle machine; the bound leaves room for a
	// loaded one. The seed's polling would sleep 50*n^2 ms.
	if handoff > 250*time.Millisecond {
		t.Fatalf("waiter took the released lock %v after the release began, want within 250ms", handoff)
	}
	t.Logf("handoff: %v from the start of Release to the waiter's Acquire returning", handoff)
}

func TestSessionDestroyedUnderHolder(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name)
	if _, err := c.Session().Destroy(holder.Session(), nil); err != nil {
		t.Fatal(err)
	}
	if s := holderSession(t, c, holder.Key()); s != "" {
		t.Fatalf("key still held by %s after its session was destroyed", s)
	}
	next := mustAcquire(t, c, name)
	if err := holder.Release(context.Background()); err != nil {
		t.Fatalf("Release after the session was destroyed: %v", err)
	}
	if s := holderSession(t, c, next.Key()); s != next.Session() {
		t.Fatalf("Release of the old holder changed the key's holder to %q", s)
	}
}

func TestKeyDeletedUnderHolder(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	for _, delay := range []time.Duration{0, time.Second} {
		holder := mustAcquire(t, c, name, consullock.WithLockDelay(delay))
		if _, err := c.KV().Delete(holder.Key(), nil); err != nil {
			t.Fatal(err)
		}
		next := mustAcquire(t, c, name)
		if err := holder.Release(context.Background()); err != nil {
			t.Fatalf("lock delay %v: Release after the key was deleted: %v", delay, err)
		}
		if s := holderSession(t, c, next.Key()); s != next.Session() {
			t.Fatalf("lock delay %v: Release of the old holder changed the key's holder to %q", delay, s)
		}
		if err := next.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLocksAreSingleUse(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	l := newLock(t, c, lockName(t, "k"))
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release before Acquire: %v", err)
	}
	if err := l.Acquire(ctx); !errors.Is(err, consullock.ErrAlreadyUsed) {
		t.Fatalf("Acquire after Release = %v, want ErrAlreadyUsed", err)
	}

	l = newLock(t, c, lockName(t, "k"))
	if err := l.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Acquire(ctx); !errors.Is(err, consullock.ErrAlreadyUsed) {
		t.Fatalf("second Acquire = %v, want ErrAlreadyUsed", err)
	}
	if ok, err := l.TryAcquire(ctx); ok || !errors.Is(err, consullock.ErrAlreadyUsed) {
		t.Fatalf("TryAcquire on a used lock = (%v, %v), want ErrAlreadyUsed", ok, err)
	}
	for i := range 2 {
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release #%d: %v", i+1, err)
		}
	}
	if s := holderSession(t, c, l.Key()); s != "" {
		t.Fatalf("key held by %s after Release", s)
	}
}

func TestAcquireHonoursCancellation(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name)

	waiter := newLock(t, c, name, consullock.WithAcquireTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := waiter.Acquire(ctx)
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Fatalf("Acquire returned %v after its context's deadline of 200ms", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v, want context.DeadlineExceeded", err)
	}
	if n := sessionsNamed(t, c, holder.Key()); n != 1 {
		t.Fatalf("%d sessions for %s after the cancelled Acquire, want only the holder's", n, holder.Key())
	}
}

func TestReleaseCancelsAcquireInProgress(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name)
	waiter := newLock(t, c, name, consullock.WithAcquireTimeout(time.Minute))
	errc := make(chan error, 1)
	go func() { errc <- waiter.Acquire(context.Background()) }()
	consultest.Eventually(t, 5*time.Second, "the waiter's session exists", func() bool {
		return sessionsNamed(t, c, holder.Key()) == 2
	})
	if err := waiter.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire cancelled by Release = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire still waiting 5s after Release")
	}
	if n := sessionsNamed(t, c, holder.Key()); n != 1 {
		t.Fatalf("%d sessions for %s, want only the holder's", n, holder.Key())
	}
}

func TestHoldReleasesWhateverFnDoes(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	boom := errors.New("boom")

	l := newLock(t, c, name)
	var ran bool
	err := l.Hold(ctx, func(context.Context) error {
		ran = true
		if s := holderSession(t, c, l.Key()); s != l.Session() {
			t.Errorf("inside Hold the key is held by %q, want %q", s, l.Session())
		}
		return boom
	})
	if !ran || !errors.Is(err, boom) {
		t.Fatalf("Hold = %v (fn ran: %v), want fn's error", err, ran)
	}
	if s := holderSession(t, c, l.Key()); s != "" {
		t.Fatalf("key held by %s after Hold returned", s)
	}

	l = newLock(t, c, name)
	func() {
		defer func() {
			if r := recover(); r != "panic in fn" {
				t.Fatalf("recovered %v, want fn's panic", r)
			}
		}()
		l.Hold(ctx, func(context.Context) error { panic("panic in fn") })
	}()
	if s := holderSession(t, c, l.Key()); s != "" {
		t.Fatalf("key held by %s after fn panicked", s)
	}

	mustAcquire(t, c, name)
	l = newLock(t, c, name)
	err = l.Hold(ctx, func(context.Context) error { t.Error("fn ran without the lock"); return nil })
	if !errors.Is(err, consullock.ErrNotAcquired) {
		t.Fatalf("Hold on a held lock = %v, want ErrNotAcquired", err)
	}
}

// Zero lock delay is sent as zero: consul/api would omit it and Consul would
// apply 15 s. A set lock delay keeps an invalidated holder's key from everyone
// for that long, but a clean Release imposes none.
func TestLockDelay(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	const delay = 2 * time.Second
	for _, want := range []time.Duration{0, delay} {
		l := mustAcquire(t, c, name, consullock.WithLockDelay(want))
		info, _, err := c.Session().Info(l.Session(), nil)
		if err != nil || info == nil {
			t.Fatalf("session info: %v", err)
		}
		if info.LockDelay != want {
			t.Fatalf("WithLockDelay(%v): Consul's session has LockDelay %v", want, info.LockDelay)
		}
		start := time.Now()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		next := mustAcquire(t, c, name)
		if took := time.Since(start); took > delay/2 {
			t.Fatalf("after a clean Release with lock delay %v, the next acquire took %v", want, took)
		}
		if err := next.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}

	holder := mustAcquire(t, c, name, consullock.WithLockDelay(delay))
	invalidated := time.Now()
	if _, err := c.Session().Destroy(holder.Session(), nil); err != nil {
		t.Fatal(err)
	}
	next := newLock(t, c, name, consullock.WithAcquireTimeout(10*time.Second))
	releaseAtEnd(t, next)
	if err := next.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(invalidated); took < delay || took > delay+time.Second {
		t.Fatalf("lock taken %v after its holder's session was invalidated, want after the lock delay %v and within 1s of it", took, delay)
	}
}

// Go and python-consul-lock holders exclude each other: same key layout, same
// value, same kind of session. The Python side is played by the HTTP calls
// python-consul-lock makes.
func TestInteropWithPythonConsulLock(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	key := "locks/ephemeral/" + name

	goHolder := mustAcquire(t, c, name)
	if goHolder.Key() != key {
		t.Fatalf("key %q, want python-consul-lock's %q", goHolder.Key(), key)
	}
	pair, _, err := c.KV().Get(key, nil)
	if err != nil || pair == nil {
		t.Fatalf("get %s: %v", key, err)
	}
	var value map[string]any
	if err := json.Unmarshal(pair.Value, &value); err != nil {
		t.Fatalf("value %q is not JSON: %v", pair.Value, err)
	}
	if _, err := time.Parse("2006-01-02 15:04:05.000000", value["locked_at"].(string)); err != nil {
		t.Fatalf("locked_at %q is not Python's str(datetime.now()): %v", value["locked_at"], err)
	}
	if pythonAcquire(t, c, key) {
		t.Fatal("a python-consul-lock holder took a key a Go holder has")
	}
	if err := goHolder.Release(ctx); err != nil {
		t.Fatal(err)
	}

	if !pythonAcquire(t, c, key) {
		t.Fatal("a python-consul-lock holder could not take a free key")
	}
	if ok, err := newLock(t, c, name).TryAcquire(ctx); ok || err != nil {
		t.Fatalf("TryAcquire on a key a Python holder has = (%v, %v), want (false, nil)", ok, err)
	}
}

// pythonAcquire does what python-consul-lock's lock() does once: a session
// with lock delay 0 and the lock timeout as TTL, then a PUT with ?acquire.
// The session is destroyed when the test ends.
func pythonAcquire(t *testing.T, c *api.Client, key string) bool {
	t.Helper()
	var out struct{ ID string }
	body := map[string]any{"LockDelay": "0s", "TTL": "180s", "Behavior": "delete"}
	if _, err := c.Raw().Write("/v1/session/create", body, &out, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Session().Destroy(out.ID, nil) })
	value, _ := json.Marshal(map[string]string{"locked_at": time.Now().Format("2006-01-02 15:04:05.000000")})
	ok, _, err := c.KV().Acquire(&api.KVPair{Key: key, Value: value, Session: out.ID}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// 8 goroutines take one key 50 times each; no two critical sections overlap.
func TestContention(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	const workers, rounds = 8, 50
	var d overlapDetector
	var wg sync.WaitGroup
	errc := make(chan error, workers*rounds)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for range rounds {
				errc <- holdOnce(c, name, time.Minute, func() { d.section(time.Millisecond) })
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d.overlaps.Load() != 0 || d.entries.Load() != workers*rounds {
		t.Fatalf("%d overlapping critical sections in %d, want 0 in %d", d.overlaps.Load(), d.entries.Load(), workers*rounds)
	}
	t.Logf("%d lock cycles on one key by %d goroutines in %v, no overlap", workers*rounds, workers, time.Since(start).Round(time.Millisecond))
}

// Fencing tokens strictly increase across successive holders of a key, also
// after the key was deleted (Consul's LockIndex would start again at 1).
func TestTokensIncreaseAcrossHolders(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	var last uint64
	for i := range 5 {
		l := mustAcquire(t, c, name)
		tok := l.Token()
		pair, _, err := c.KV().Get(l.Key(), nil)
		if err != nil || pair == nil {
			t.Fatalf("get %s: %v", l.Key(), err)
		}
		if tok <= last || tok != pair.ModifyIndex {
			t.Fatalf("holder %d: token %d (last %d, key's ModifyIndex %d), want greater than the last and equal to the acquiring write's index", i, tok, last, pair.ModifyIndex)
		}
		if pair.LockIndex != 1 {
			t.Fatalf("LockIndex %d, want 1: the key should be new for each holder", pair.LockIndex)
		}
		last = tok
		if i%2 == 0 {
			if _, err := c.KV().Delete(l.Key(), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if l.Token() != 0 {
			t.Fatalf("Token() = %d after Release, want 0", l.Token())
		}
	}
}
