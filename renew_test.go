package consullock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// With renewal, a lock outlives twice its LockTimeout, after which Consul
// would have freed an unrenewed one.
func TestRenewalKeepsTheLockPastItsTTL(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const ttl = consullock.MinLockTimeout
	l := mustAcquire(t, c, lockName(t, "k"), consullock.WithLockTimeout(ttl), consullock.WithRenewal())
	select {
	case <-l.Lost():
		t.Fatalf("renewed lock lost: %v", l.Err())
	case <-time.After(2*ttl + 3*time.Second):
	}
	if s := holderSession(t, c, l.Key()); s != l.Session() {
		t.Fatalf("after %v the key is held by %q, want the renewed session", 2*ttl+3*time.Second, s)
	}
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
