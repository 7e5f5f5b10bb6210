package consullock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// lostWithin fails the test unless l's Lost channel closes within d, and
// returns how long it took.
func lostWithin(t *testing.T, l *consullock.EphemeralLock, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-l.Lost():
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("Lost() not closed within %v", d)
		return 0
	}
}

func TestLostWhenTakenAway(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		take func(c *api.Client, l *consullock.EphemeralLock) error
	}{
		{"key deleted", func(c *api.Client, l *consullock.EphemeralLock) error {
			_, err := c.KV().Delete(l.Key(), nil)
			return err
		}},
		{"session destroyed", func(c *api.Client, l *consullock.EphemeralLock) error {
			_, err := c.Session().Destroy(l.Session(), nil)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := consultest.Client(t)
			l := mustAcquire(t, c, lockName(t, "k"))
			select {
			case <-l.Lost():
				t.Fatal("Lost() closed while the lock is held")
			default:
			}
			if err := tc.take(c, l); err != nil {
				t.Fatal(err)
			}
			took := lostWithin(t, l, time.Second)
			if !errors.Is(l.Err(), consullock.ErrLockLost) {
				t.Fatalf("Err() = %v, want ErrLockLost", l.Err())
			}
			t.Logf("%s: loss noticed after %v: %v", tc.name, took, l.Err())
		})
	}
}

// Hold's function learns of the loss through its context, whose cause wraps
// ErrLockLost.
func TestHoldContextCancelledOnLoss(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	l := newLock(t, c, lockName(t, "k"))
	var cause error
	var lostAfter time.Duration
	err := l.Hold(context.Background(), func(ctx context.Context) error {
		start := time.Now()
		if _, err := c.Session().Destroy(l.Session(), nil); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			lostAfter, cause = time.Since(start), context.Cause(ctx)
			return cause
		case <-time.After(5 * time.Second):
			return errors.New("fn's context not cancelled within 5s of the loss")
		}
	})
	if !errors.Is(err, consullock.ErrLockLost) || !errors.Is(cause, consullock.ErrLockLost) {
		t.Fatalf("Hold = %v, cause %v: want ErrLockLost", err, cause)
	}
	if lostAfter > time.Second {
		t.Fatalf("fn's context cancelled %v after the loss, want within 1s", lostAfter)
	}
}

// A holder that outlives its maximum lifespan is told so before Consul could
// give the key to anyone else.
func TestLostAtMaximumLifespan(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl = consullock.MinLockTimeout
	start := time.Now()
	l := mustAcquire(t, c, lockName(t, "k"), consullock.WithLockTimeout(ttl))
	took := lostWithin(t, l, ttl+time.Second)
	if since := time.Since(start); since < ttl-2*time.Second || since >= ttl {
		t.Fatalf("lost %v after the acquire began, want shortly before LockTimeout %v", since, ttl)
	}
	if s := holderSession(t, c, l.Key()); s != l.Session() {
		t.Fatalf("key held by %q when the loss was reported, want still by the lock's session", s)
	}
	t.Logf("maximum lifespan %v: loss reported %v after the acquire returned: %v", ttl, took, l.Err())
}

// A clean release closes Lost without reporting a loss, and a Hold whose
// function ends normally sees no cancellation.
func TestReleaseIsNotALoss(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	l := newLock(t, c, lockName(t, "k"))
	err := l.Hold(context.Background(), func(ctx context.Context) error {
		return context.Cause(ctx)
	})
	if err != nil {
		t.Fatalf("Hold = %v", err)
	}
	lostWithin(t, l, time.Second)
	if l.Err() != nil {
		t.Fatalf("Err() = %v after a clean release, want nil", l.Err())
	}

	busy := mustAcquire(t, c, lockName(t, "busy"))
	notAcquired := newLock(t, c, lockName(t, "busy"))
	if ok, err := notAcquired.TryAcquire(context.Background()); ok || err != nil {
		t.Fatalf("TryAcquire = (%v, %v)", ok, err)
	}
	lostWithin(t, notAcquired, time.Second)
	if notAcquired.Err() != nil || busy.Err() != nil {
		t.Fatalf("Err() = %v / %v without a loss", notAcquired.Err(), busy.Err())
	}
}

// A fenced write lands while the lock is held and is refused, with nothing
// written, once the lock is lost.
func TestPutFencedRefusedAfterLoss(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	l := mustAcquire(t, c, lockName(t, "k"))
	data := "locks/data/" + lockName(t, "d")
	t.Cleanup(func() { c.KV().Delete(data, nil) })

	if err := l.PutFenced(ctx, data, []byte("v1")); err != nil {
		t.Fatalf("fenced put while held: %v", err)
	}
	if _, err := c.Session().Destroy(l.Session(), nil); err != nil {
		t.Fatal(err)
	}
	lostWithin(t, l, time.Second)
	if err := l.PutFenced(ctx, data, []byte("v2")); !errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("fenced put after the loss = %v, want ErrLockLost", err)
	}
	pair, _, err := c.KV().Get(data, nil)
	if err != nil || pair == nil || string(pair.Value) != "v1" {
		t.Fatalf("data = %v (%v), want v1: the refused write must not land", pair, err)
	}
	if err := l.PutFenced(ctx, "bad key", nil); !errors.Is(err, consullock.ErrInvalidKey) {
		t.Fatalf("fenced put to a bad key = %v, want ErrInvalidKey", err)
	}
}

// A Release from another goroutine while Hold's function runs cancels the
// function's context: the lock it relies on is gone.
func TestReleaseDuringHoldCancelsFn(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	l := newLock(t, c, lockName(t, "k"))
	running := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- l.Hold(context.Background(), func(ctx context.Context) error {
			close(running)
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(5 * time.Second):
				return errors.New("fn's context not cancelled within 5s of the Release")
			}
		})
	}()
	<-running
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err == nil || errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("Hold = %v, want the release as fn's cause (not a loss)", err)
	}
	if s := holderSession(t, c, l.Key()); s != "" {
		t.Fatalf("key held by %s after Release", s)
	}
}

// A fenced write by a lock that is not held (released, or never acquired)
// is refused locally, even when the key exists without a holder.
func TestPutFencedRefusedWhenNotHeld(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	l := newLock(t, c, lockName(t, "k"))
	data := "locks/data/" + lockName(t, "d")
	// The lock's key exists, unlocked: a check for an empty session would pass.
	if _, err := c.KV().Put(&api.KVPair{Key: l.Key(), Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.KV().Delete(l.Key(), nil); c.KV().Delete(data, nil) })
	if err := l.PutFenced(ctx, data, []byte("v")); !errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("fenced put by a lock never acquired = %v, want ErrLockLost", err)
	}
	ok, _, _, err := c.KV().Txn(api.KVTxnOps{l.CheckOp(), {Verb: api.KVSet, Key: data, Value: []byte("v")}}, nil)
	if err != nil || ok {
		t.Fatalf("a transaction guarded by CheckOp of a lock not held applied (ok %v, err %v)", ok, err)
	}
	if pair, _, _ := c.KV().Get(data, nil); pair != nil {
		t.Fatal("a refused fenced write landed")
	}
}

// A fenced write that Consul refuses tells the lease of its loss at once,
// before any watch could (nothing watches a lease nobody asked Lost of), and
// the key, still locked by the session but no longer as the lease took it,
// is given back.
func TestLeaseLostWhenConsulRefusesFencedPut(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	l, err := newLocker(t, c).Acquire(ctx, lockName(t, "k"))
	if err != nil {
		t.Fatal(err)
	}
	data := "locks/data/" + lockName(t, "d")
	t.Cleanup(func() { c.KV().Delete(data, nil) })
	// A plain write keeps the session's lock but moves the key's index on.
	if _, err := c.KV().Put(&api.KVPair{Key: l.Key(), Value: []byte("overwritten")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.PutFenced(ctx, data, []byte("v")); !errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("fenced put after the key changed = %v, want ErrLockLost", err)
	}
	if err := l.Err(); !errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("Err() after Consul refused a fenced put = %v, want ErrLockLost", err)
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("Lost() not closed after Consul refused a fenced put")
	}
	if pair, _, _ := c.KV().Get(data, nil); pair != nil {
		t.Fatal("the refused fenced write landed")
	}
	consultest.Eventually(t, 5*time.Second, "the changed key is given back", func() bool {
		return holderSession(t, c, l.Key()) == ""
	})
	c.KV().Delete(l.Key(), nil)
}

// A loss that comes while a Release is failing (Consul answers nothing but
// 500s, and the session's local deadline passes during the attempts) is not
// dropped: once the Release gives up, the lease is lost, Lost is closed and
// Hold's context would be cancelled.
func TestLossDuringFailedReleaseIsReported(t *testing.T) {
	t.Parallel()
	direct := consultest.Client(t)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	var rec recorder
	lk := newLocker(t, c, consullock.WithSessionTTL(10*time.Second), consullock.WithObserver(&rec))
	ctx := context.Background()
	l, err := lk.Acquire(ctx, lockName(t, "k"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		direct.Session().Destroy(l.Session(), nil)
		direct.KV().Delete(l.Key(), nil)
	})
	l.Lost() // watched, as Hold watches it
	proxy.SetFaults(1, faultproxy.Status500)
	// Once a renewal (at 5 s) is refused, the session's local deadline (9 s)
	// falls inside the 10 s for which Release retries.
	consultest.Eventually(t, 10*time.Second, "a renewal is refused", func() bool { return rec.count("Renew") > 0 })
	if err := l.Release(ctx); err == nil {
		t.Fatal("Release succeeded through a proxy that answers only 500")
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("Lost() not closed after a failed Release during which the session's deadline passed")
	}
	if err := l.Err(); !errors.Is(err, consullock.ErrLockLost) {
		t.Fatalf("Err() = %v, want ErrLockLost", err)
	}
	proxy.SetFaults(0)
}

// While a Release waits for Consul (here, answering 500 until told
// otherwise), Err and Token answer at once rather than waiting for it, and
// a second Release waits for the first's outcome.
func TestReleaseDoesNotHoldUpErr(t *testing.T) {
	t.Parallel()
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	l := mustAcquire(t, c, lockName(t, "k"))
	token := l.Token()
	proxy.SetFaults(1, faultproxy.Status500)
	released := make(chan error, 2)
	go func() { released <- l.Release(context.Background()) }()
	consultest.Eventually(t, 5*time.Second, "the release meets a failure", func() bool { return proxy.Counts()[faultproxy.Status500] > 0 })
	go func() { released <- l.Release(context.Background()) }()
	start := time.Now()
	err, tok := l.Err(), l.Token()
	if took := time.Since(start); took > time.Second || err != nil || tok != token {
		t.Fatalf("during a Release: Err() = %v, Token() = %d (want %d), after %v", err, tok, token, took)
	}
	proxy.SetFaults(0)
	for range 2 {
		if err := <-released; err != nil {
			t.Fatalf("Release once Consul answered again: %v", err)
		}
	}
	if s := holderSession(t, consultest.Client(t), l.Key()); s != "" {
		t.Fatalf("key held by %s after the Release", s)
	}
}
