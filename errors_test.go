package consullock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Every error a caller gets wraps an exported sentinel, so errors.Is tells
// what happened, and names the package once, in front.
func TestErrorsWrapSentinelsAndNameThePackageOnce(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	type errCase struct {
		what string
		err  error
		want error
	}
	var cases []errCase
	add := func(what string, err, want error) { cases = append(cases, errCase{what, err, want}) }

	_, err := consullock.NewEphemeralLock("", consullock.WithClient(c))
	add("NewEphemeralLock of an empty name", err, consullock.ErrInvalidKey)
	_, err = consullock.NewLocker(consullock.WithClient(c), consullock.WithLockDelay(-time.Second))
	add("NewLocker with a negative lock delay", err, consullock.ErrInvalidOption)

	holder := mustAcquire(t, c, name)
	waiter := newLock(t, c, name)
	add("EphemeralLock.Acquire of a held lock", waiter.Acquire(ctx), consullock.ErrNotAcquired)
	add("a second Acquire", waiter.Acquire(ctx), consullock.ErrAlreadyUsed)
	add("PutFenced of a lock not held", waiter.PutFenced(ctx, "fenced/"+name, nil), consullock.ErrLockLost)

	lk := newLocker(t, c)
	_, err = lk.Acquire(ctx, name)
	add("Locker.Acquire of a held lock", err, consullock.ErrNotAcquired)
	_, err = lk.AcquireAll(ctx)
	add("AcquireAll of nothing", err, consullock.ErrInvalidOption)
	_, err = lk.Semaphore(name, 0)
	add("a Semaphore of limit 0", err, consullock.ErrInvalidOption)

	released := make(chan error, 1)
	other := newLock(t, c, lockName(t, "released"))
	err = other.Hold(ctx, func(ctx context.Context) error {
		go other.Release(context.Background())
		<-ctx.Done()
		released <- context.Cause(ctx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	add("Hold's cause after another goroutine's Release", <-released, consullock.ErrReleased)

	if _, err := c.KV().Delete(holder.Key(), nil); err != nil {
		t.Fatal(err)
	}
	<-holder.Lost()
	add("Err after the key was deleted", holder.Err(), consullock.ErrLockLost)

	closed, err := consullock.NewLocker(consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = closed.Acquire(ctx, name)
	add("Acquire after Close", err, consullock.ErrClosed)

	e, err := consullock.NewElection(lockName(t, "election"), consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Leader(ctx)
	add("Leader of an election without one", err, consullock.ErrNoLeader)

	for _, tc := range cases {
		switch {
		case !errors.Is(tc.err, tc.want):
			t.Errorf("%s: %v, want %v", tc.what, tc.err, tc.want)
		case tc.want == consullock.ErrReleased:
			// A cause, not an operation's error: the sentinel itself.
		case !strings.HasPrefix(tc.err.Error(), "consullock: ") || strings.Count(tc.err.Error(), "consullock:") != 1:
			t.Errorf("%s: %q names the package %d times, want once, in front", tc.what, tc.err, strings.Count(tc.err.Error(), "consullock:"))
		}
	}
}
