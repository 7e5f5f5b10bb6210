package consullock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// With reentrancy, code under Hold may take the same lock again through the
// context Hold gives it; the lock is given back only when the outer hold
// ends, and another session is refused throughout.
func TestReentrantHolds(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	lk := newLocker(t, c, consullock.WithReentrancy(), consullock.WithAcquireTimeout(200*time.Millisecond))
	other := newLocker(t, c, consullock.WithAcquireTimeout(200*time.Millisecond))
	var token uint64
	err := lk.Hold(ctx, name, func(ctx context.Context) error {
		inner, err := lk.Acquire(ctx, name) // counted, not waited for
		if err != nil {
			return err
		}
		token = inner.Token()
		err = lk.Hold(ctx, name, func(ctx context.Context) error { return nil })
		if err != nil {
			return err
		}
		if err := inner.Release(ctx); err != nil {
			return err
		}
		if s := holderSession(t, c, "locks/ephemeral/"+name); s == "" {
			t.Error("an inner release gave the lock back while the outer hold goes on")
		}
		if _, err := other.Acquire(ctx, name); !errors.Is(err, consullock.ErrNotAcquired) {
			t.Errorf("another session during a reentrant hold: %v, want ErrNotAcquired", err)
		}
		return ctx.Err() // the inner holds must not have cancelled the outer one
	})
	if err != nil || token == 0 {
		t.Fatalf("reentrant holds: %v (token %d)", err, token)
	}
	if s := holderSession(t, c, "locks/ephemeral/"+name); s != "" {
		t.Fatalf("key held by %s after the outer hold ended", s)
	}
}

// Without reentrancy, the same nested acquire waits for the lock like any
// other and times out.
func TestNotReentrantByDefault(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	lk := newLocker(t, c, consullock.WithAcquireTimeout(200*time.Millisecond))
	err := lk.Hold(context.Background(), name, func(ctx context.Context) error {
		_, err := lk.Acquire(ctx, name)
		return err
	})
	if !errors.Is(err, consullock.ErrNotAcquired) {
		t.Fatalf("nested acquire without reentrancy = %v, want ErrNotAcquired", err)
	}
}

// A reentrant Acquire that races with the Release of the lease it counts on
// either counts a hold before the Release (which then only counts it down,
// and the lock stays held) or waits for the lock like anyone else: it never
// returns a lease whose key is on its way back.
func TestReentrantAcquireRacingRelease(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	lk := newLocker(t, c, consullock.WithReentrancy(), consullock.WithAcquireTimeout(5*time.Second))
	for i := range 200 {
		outer, err := lk.Acquire(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		inner := make(chan *consullock.Lease, 1)
		go func() {
			l, err := lk.Acquire(consullock.ContextWithLease(ctx, outer), name)
			if err != nil {
				t.Error(err)
			}
			inner <- l
		}()
		if err := outer.Release(ctx); err != nil {
			t.Fatal(err)
		}
		l := <-inner
		if l == nil {
			return
		}
		if l.Err() != nil || holderSession(t, c, l.Key()) != l.Session() {
			t.Fatalf("round %d: the reentrant Acquire returned a lease (same as the outer: %v) whose lock is not held", i, l == outer)
		}
		if err := l.Release(ctx); err != nil { // the last hold, either way
			t.Fatal(err)
		}
	}
}
