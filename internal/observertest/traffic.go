// Package observertest drives the lock traffic that the tests of the metrics
// adapters (contrib/prometheus, contrib/otel) measure, on a real agent.
package observertest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Traffic reports to o, through Lockers on the shared agent: 3 lock cycles
// of locks/ephemeral/billing/invoice-1, then, on invoice-2, an acquire that
// finds the key held and times out (a contention and a timeout), and the
// holder's loss by the destruction of its session. In all: 4 acquires, 1
// timeout, 1 contention, 3 releases and 1 loss, all under the prefix
// locks/ephemeral/billing. It returns the lease that was lost, whose session
// and token must not show in any label.
func Traffic(t *testing.T, o consullock.Observer) *consullock.Lease {
	t.Helper()
	c := consultest.Client(t)
	ctx := context.Background()
	newLocker := func() *consullock.Locker {
		lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithObserver(o), consullock.WithAcquireTimeout(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lk.Close(ctx) })
		return lk
	}
	lk, other := newLocker(), newLocker()
	for range 3 {
		if err := lk.Hold(ctx, "billing/invoice-1", func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	held, err := lk.Acquire(ctx, "billing/invoice-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(ctx, "billing/invoice-2"); !errors.Is(err, consullock.ErrNotAcquired) {
		t.Fatalf("acquire of a held lock: %v, want ErrNotAcquired", err)
	}
	lost := held.Lost() // starts the watch before the loss
	if _, err := c.Session().Destroy(held.Session(), nil); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 10*time.Second, "the lease is lost", func() bool {
		select {
		case <-lost:
			return true
		default:
			return false
		}
	})
	return held
}
