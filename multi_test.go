package consullock_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Two Lockers take the same two keys, named in opposite orders, again and
// again: no deadlock, no overlap on either key, and tokens that increase.
func TestAcquireAllNeverDeadlocks(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	a, b := lockName(t, "a"), lockName(t, "b")
	var onA, onB overlapDetector
	var wg sync.WaitGroup
	for i, names := range [][]string{{a, b}, {b, a}, {a, b}, {b, a}} {
		lk := newLocker(t, c, consullock.WithAcquireTimeout(time.Minute))
		wg.Go(func() {
			var last uint64
			for range 25 {
				leases, err := lk.AcquireAll(context.Background(), names...)
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
				if leases[0].Token() <= last || leases[0].Token() != leases[1].Token() {
					t.Errorf("tokens %d and %d after %d: want one new token for the keys taken together", leases[0].Token(), leases[1].Token(), last)
				}
				last = leases[0].Token()
				var in sync.WaitGroup
				in.Go(func() { onA.section(time.Millisecond) })
				in.Go(func() { onB.section(time.Millisecond) })
				in.Wait()
				for _, l := range leases {
					if err := l.Release(context.Background()); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if onA.overlaps.Load() != 0 || onB.overlaps.Load() != 0 || onA.entries.Load() != 100 {
		t.Fatalf("overlaps %d on a and %d on b in %d sections", onA.overlaps.Load(), onB.overlaps.Load(), onA.entries.Load())
	}
}

// All or nothing: while one key is held, taking it with another fails at the
// timeout and leaves the other key untouched; once it is free, both are
// taken at once.
func TestAcquireAllIsAllOrNothing(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	a, b := lockName(t, "a"), lockName(t, "b")
	holder := newLocker(t, c)
	held, err := holder.Acquire(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	lk := newLocker(t, c, consullock.WithAcquireTimeout(300*time.Millisecond))
	if _, err := lk.AcquireAll(ctx, a, b); !errors.Is(err, consullock.ErrNotAcquired) {
		t.Fatalf("AcquireAll with one key held = %v, want ErrNotAcquired", err)
	}
	if s := holderSession(t, c, "locks/ephemeral/"+a); s != "" {
		t.Fatalf("the free key was left held by %s after a failed AcquireAll", s)
	}
	go func() {
		time.Sleep(100 * time.Millisecond) // hold a little longer, then let go
		held.Release(ctx)
	}()
	slow := newLocker(t, c, consullock.WithAcquireTimeout(10*time.Second))
	leases, err := slow.AcquireAll(ctx, a, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if holderSession(t, c, l.Key()) != l.Session() {
			t.Fatalf("%s not held after AcquireAll", l.Key())
		}
		l.Release(ctx)
	}
}

func TestAcquireAllBadInput(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	lk := newLocker(t, c)
	many := make([]string, consullock.MaxKeysPerAcquire+1)
	for i := range many {
		many[i] = lockName(t, strconv.Itoa(i))
	}
	for _, tc := range []struct {
		names []string
		want  error
	}{
		{nil, consullock.ErrInvalidOption},
		{many, consullock.ErrInvalidOption},
		{[]string{lockName(t, "a"), lockName(t, "a")}, consullock.ErrInvalidKey},
		{[]string{lockName(t, "a"), "../b"}, consullock.ErrInvalidKey},
	} {
		if _, err := lk.AcquireAll(context.Background(), tc.names...); !errors.Is(err, tc.want) {
			t.Errorf("AcquireAll(%d names: %s) = %v, want %v", len(tc.names), strings.Join(tc.names[:min(2, len(tc.names))], ", "), err, tc.want)
		}
	}
	assertNothingWritten(t, c, "locks/ephemeral/"+lockName(t, ""))
}
