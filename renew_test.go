package consullock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// With renewal, a lock outlives twice its LockTimeout, after which Consul
// would have freed an unrenewed one, although half the requests of the
// renewals and of the watch fail on the way.
func TestRenewalKeepsTheLockPastItsTTL(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	faulty, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	const ttl = consullock.MinLockTimeout
	l := mustAcquire(t, faulty, lockName(t, "k"), consullock.WithLockTimeout(ttl), consullock.WithRenewal())
	proxy.SetFaults(0.5, faultproxy.Status500, faultproxy.Status429, faultproxy.ResetBefore, faultproxy.ResetAfter)
	select {
	case <-l.Lost():
		t.Fatalf("renewed lock lost: %v", l.Err())
	case <-time.After(2*ttl + 3*time.Second):
	}
	if s := holderSession(t, c, l.Key()); s != l.Session() {
		t.Fatalf("after %v the key is held by %q, want the renewed session", 2*ttl+3*time.Second, s)
	}
	proxy.SetFaults(0)
	t.Logf("requests through the proxy: %v", proxy.Counts())
}

// A holder cut off from Consul learns of the loss at its local deadline,
// while Consul still has the key: before anyone else could take it.
func TestLostWhenCutOffBeforeConsulFreesTheKey(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	faulty, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	const ttl = consullock.MinLockTimeout
	l := mustAcquire(t, faulty, lockName(t, "k"), consullock.WithLockTimeout(ttl), consullock.WithRenewal())
	proxy.SetFaults(1, faultproxy.ResetBefore)
	took := lostWithin(t, l, 2*ttl)
	if s := holderSession(t, c, l.Key()); s != l.Session() {
		t.Fatalf("when the loss was reported the key was held by %q: Consul had already freed it", s)
	}
	if !errors.Is(l.Err(), consullock.ErrLockLost) {
		t.Fatalf("Err() = %v, want ErrLockLost", l.Err())
	}
	t.Logf("cut off from Consul after the acquire; loss reported %v later, with the key still the holder's in Consul: %v", took.Round(time.Millisecond), l.Err())
	proxy.SetFaults(0)
}

// After a loss nothing renews the session: Consul invalidates it within
// twice its TTL although the holder never called Release.
func TestNoRenewalAfterLoss(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl = consullock.MinLockTimeout
	l := newLock(t, c, lockName(t, "k"), consullock.WithLockTimeout(ttl), consullock.WithRenewal())
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	session := l.Session()
	if _, err := c.KV().Delete(l.Key(), nil); err != nil {
		t.Fatal(err)
	}
	lostWithin(t, l, time.Second)
	if !errors.Is(l.Err(), consullock.ErrLockLost) {
		t.Fatalf("Err() = %v, want ErrLockLost", l.Err())
	}
	consultest.Eventually(t, 2*ttl+3*time.Second, "Consul invalidates the lost lock's session (no zombie renewal)", func() bool {
		info, _, err := c.Session().Info(session, nil)
		return err == nil && info == nil
	})
	if err := l.Release(context.Background()); err != nil {
		t.Fatalf("Release after the loss: %v", err)
	}
}

// A waiter whose wait outlasts twice its session's TTL still gets a lock with
// its lifespan ahead: the session is renewed while it waits.
func TestLongWaitKeepsTheSessionFresh(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl = consullock.MinLockTimeout
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name, consullock.WithLockTimeout(ttl), consullock.WithRenewal())
	waiter := newLock(t, c, name, consullock.WithLockTimeout(ttl), consullock.WithRenewal(), consullock.WithAcquireTimeout(time.Minute))
	releaseAtEnd(t, waiter)
	errc := make(chan error, 1)
	go func() { errc <- waiter.Acquire(context.Background()) }()
	select {
	case err := <-errc:
		t.Fatalf("waiter returned while the lock was held: %v", err)
	case <-time.After(2*ttl + 2*time.Second): // longer than Consul keeps an unrenewed session
	}
	if err := holder.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("acquire after a long wait: %v", err)
	}
	select {
	case <-waiter.Lost():
		t.Fatalf("lock lost at once after a long wait: %v", waiter.Err())
	case <-time.After(ttl):
	}
}
