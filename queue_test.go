package consullock_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// contend runs workers, each a Locker of its own as separate processes
// would have, for rounds cycles on one key, and returns the waits and the
// acquire attempts per acquire.
func contend(t *testing.T, name string, workers, rounds int, hold time.Duration, opts ...consullock.Option) (waits []time.Duration, attempts float64) {
	c := consultest.Client(t)
	var d overlapDetector
	var mu sync.Mutex
	counts := &attemptCount{}
	var wg sync.WaitGroup
	for range workers {
		lk := newLocker(t, c, append(opts, consullock.WithAcquireTimeout(time.Minute), consullock.WithObserver(counts))...)
		wg.Go(func() {
			for range rounds {
				start := time.Now()
				err := lk.Hold(context.Background(), name, func(context.Context) error {
					mu.Lock()
					waits = append(waits, time.Since(start))
					mu.Unlock()
					d.section(hold)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if d.overlaps.Load() != 0 {
		t.Fatalf("%d overlaps", d.overlaps.Load())
	}
	slices.Sort(waits)
	return waits, counts.perAcquire()
}

type attemptCount struct {
	consullock.NopObserver
	mu                 sync.Mutex
	acquires, attempts int
}

func (a *attemptCount) Acquired(e consullock.AcquireEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acquires++
	a.attempts += e.Attempts
}

func (a *attemptCount) perAcquire() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return float64(a.attempts) / float64(a.acquires)
}

// Waiters of different processes are served in arrival order, with fair
// queueing and without: about one write per acquire (the enqueue: a release
// hands the key to the first waiter instead of waking them all; a second
// write is a take that found the key held before the process knew of the
// line), no contender key left, and the worst waits of both modes measured.
func TestFairQueueing(t *testing.T) {
	t.Parallel()
	const workers, rounds = 16, 10
	fairWaits, fairAttempts := contend(t, lockName(t, "fair"), workers, rounds, 2*time.Millisecond, consullock.WithFairQueueing())
	waits, defaultAttempts := contend(t, lockName(t, "default"), workers, rounds, 2*time.Millisecond)
	t.Logf("%d workers x %d cycles: fair queueing: worst wait %v, p50 %v, %.2f attempts per acquire; default: worst wait %v, p50 %v, %.2f attempts per acquire",
		workers, rounds, fairWaits[len(fairWaits)-1].Round(time.Millisecond), fairWaits[len(fairWaits)/2].Round(time.Millisecond), fairAttempts,
		waits[len(waits)-1].Round(time.Millisecond), waits[len(waits)/2].Round(time.Millisecond), defaultAttempts)
	if fairAttempts > 1.25 || defaultAttempts > 1.25 {
		t.Fatalf("%.2f and %.2f writes per acquire with fair queueing and without, want about 1: a release hands the key to one waiter", fairAttempts, defaultAttempts)
	}
	c := consultest.Client(t)
	if keys, _, _ := c.KV().Keys("locks/ephemeral/"+lockName(t, ""), "", nil); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// Holders that release and queue again at once must not be mistaken, by the
// waiter watching their last contender key, for still queued (each acquire
// has a contender key of its own): no cycle may stall.
func TestFairQueueingFastCycles(t *testing.T) {
	t.Parallel()
	start := time.Now()
	waits, _ := contend(t, lockName(t, "k"), 4, 30, 0, consullock.WithFairQueueing())
	if worst := waits[len(waits)-1]; worst > 5*time.Second {
		t.Fatalf("a waiter stalled %v", worst)
	}
	t.Logf("120 fair cycles without holding in %v", time.Since(start).Round(time.Millisecond))
}
