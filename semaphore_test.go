package consullock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// At most limit holders at once, across goroutines of two Lockers, and the
// limit is reached.
func TestSemaphoreHoldsUpToItsLimit(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	const limit, workers, rounds = 3, 8, 20
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		lk := newLocker(t, c, consullock.WithAcquireTimeout(time.Minute))
		sem, err := lk.Semaphore(lockName(t, "pool"), limit)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for range rounds {
				l, err := sem.Acquire(context.Background())
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(2 * time.Millisecond) // work while holding a slot
				inside.Add(-1)
				if err := l.Release(context.Background()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > limit || m < 2 {
		t.Fatalf("at most %d holders at once, want up to the limit %d (and more than one)", m, limit)
	}
	t.Logf("%d acquisitions by %d workers, at most %d holders at once (limit %d)", workers*rounds, workers, most.Load(), limit)
}

func TestSemaphoreRefusals(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lk := newLocker(t, c, consullock.WithAcquireTimeout(300*time.Millisecond))
	for _, n := range []int{0, -1, consullock.MaxSemaphoreLimit + 1} {
		if _, err := lk.Semaphore(lockName(t, "s"), n); !errors.Is(err, consullock.ErrInvalidOption) {
			t.Errorf("limit %d: %v, want ErrInvalidOption", n, err)
		}
	}
	one, err := lk.Semaphore(lockName(t, "s"), 1)
	if err != nil {
		t.Fatal(err)
	}
	held, err := one.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := one.Acquire(ctx); !errors.Is(err, consullock.ErrNotAcquired) || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("second holder of a limit-1 semaphore: %v after %v, want ErrNotAcquired after the timeout", err, time.Since(start))
	}
	other, err := lk.Semaphore(lockName(t, "s"), 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(ctx); !errors.Is(err, consullock.ErrInvalidOption) {
		t.Fatalf("a holder with another limit: %v, want ErrInvalidOption", err)
	}
	held.Release(ctx)
}

// A semaphore waiter cut off from Consul for the rest of its wait reports
// ErrConsul, not ErrNotAcquired: the slots may have been free all along.
func TestSemaphoreWaitCutOffReportsConsul(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := lockName(t, "s")
	holder, err := newLocker(t, consultest.Client(t)).Semaphore(name, 1)
	if err != nil {
		t.Fatal(err)
	}
	held, err := holder.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(ctx)
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	waiter, err := newLocker(t, c, consullock.WithAcquireTimeout(3*time.Second)).Semaphore(name, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(ctx)
		got <- err
	}()
	consultest.Eventually(t, 5*time.Second, "the waiter waits on a blocking query", func() bool {
		now, _ := proxy.BlockingInFlight()
		return now > 0
	})
	proxy.Cut()
	defer proxy.Mend()
	select {
	case err := <-got:
		if !errors.Is(err, consullock.ErrConsul) || errors.Is(err, consullock.ErrNotAcquired) {
			t.Fatalf("Acquire cut off from Consul: %v, want ErrConsul", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire did not return within 10 s of its 3 s timeout")
	}
}
