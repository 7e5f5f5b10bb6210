// Package bench measures lock cycles against a real Consul agent: consullock's
// Locker and EphemeralLock, consul/api's Lock, and the floor of two raw KV
// writes, run side by side in one process against the same agent, for
// `consul-lock bench` and the go test benchmarks.
package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// Impl is one way of taking and giving back a lock.
type Impl struct {
	Name string
	// Shared makes all workers use the cycle of one New: goroutines of one
	// process sharing one lock client, rather than one client per worker.
	Shared bool
	// New returns the cycle function of one worker (a process, in effect)
	// and a function that frees what the worker holds.
	// consullock's implementations report to o, the same Observer
	// applications use, from which the run counts acquire attempts.
	New func(c *api.Client, o consullock.Observer) (cycle func(ctx context.Context, key string, inside func()) error, done func(), err error)
}

// Impls are the implementations compared. The raw floor is no lock: two KV
// writes, what any lock must at least cost.
func Impls() []Impl {
	return []Impl{RawFloor, LockerShared, Locker, LockerFair, Ephemeral, ConsulAPI}
}

// LockerFair is a Locker per worker with fair queueing: waiters of all
// processes served in arrival order, a release waking one of them.
var LockerFair = Impl{Name: "consullock Locker, fair queue, one per worker", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return newLocker(c, o, consullock.WithFairQueueing())
}}

// LockerShared is one consullock Locker shared by all workers, as the
// goroutines of one process use it.
var LockerShared = Impl{Name: "consullock Locker, shared", Shared: true, New: Locker.New}

// RawFloor is two raw KV PUTs: the cost of one consensus write to take a
// lock and one to give it back.
var RawFloor = Impl{Name: "raw KV floor (2 PUTs)", New: func(c *api.Client, _ consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return func(ctx context.Context, key string, inside func()) error {
		w := (&api.WriteOptions{}).WithContext(ctx)
		if _, err := c.KV().Put(&api.KVPair{Key: rawPrefix + key, Value: []byte("1")}, w); err != nil {
			return err
		}
		inside()
		_, err := c.KV().Put(&api.KVPair{Key: rawPrefix + key, Value: []byte("0")}, w)
		return err
	}, func() {}, nil
}}

// Locker is consullock's Locker, one per worker, as separate processes use it.
var Locker = Impl{Name: "consullock Locker, one per worker", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return newLocker(c, o)
}}

func newLocker(c *api.Client, o consullock.Observer, opts ...consullock.Option) (func(context.Context, string, func()) error, func(), error) {
	lk, err := consullock.NewLocker(append([]consullock.Option{consullock.WithClient(c), consullock.WithAcquireTimeout(time.Minute), consullock.WithObserver(o)}, opts...)...)
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, key string, inside func()) error {
		l, err := lk.Acquire(ctx, key)
		if err != nil {
			return err
		}
		inside()
		return l.Release(ctx)
	}, func() { lk.Close(context.Background()) }, nil
}

// Ephemeral is consullock's EphemeralLock: a session per lock.
var Ephemeral = Impl{Name: "consullock EphemeralLock", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return func(ctx context.Context, key string, inside func()) error {
		l, err := consullock.NewEphemeralLock(key, consullock.WithClient(c), consullock.WithAcquireTimeout(time.Minute), consullock.WithObserver(o))
		if err != nil {
			return err
		}
		if err := l.Acquire(ctx); err != nil {
			return err
		}
		inside()
		return l.Release(ctx)
	}, func() {}, nil
}}

// ConsulAPI is consul/api's Lock, used as its documentation shows: one Lock
// per worker, Lock and Unlock for each cycle.
var ConsulAPI = Impl{Name: "consul/api Lock", New: func(c *api.Client, _ consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	locks := map[string]*api.Lock{}
	return func(ctx context.Context, key string, inside func()) error {
			full := apiPrefix + key
			l := locks[full]
			if l == nil {
				var err error
				if l, err = c.LockOpts(&api.LockOptions{Key: full}); err != nil {
					return err
				}
				locks[full] = l
			}
			lost, err := l.Lock(ctx.Done())
			if err != nil {
				return err
			}
			if lost == nil {
				return fmt.Errorf("consul/api Lock: not acquired")
			}
			inside()
			return l.Unlock()
		}, func() {
			for _, l := range locks {
				l.Destroy() // deletes the key, unless another worker holds it
			}
		}, nil
}}

// Keys that the raw floor and consul/api's Lock write under; consullock's
// locks delete their keys themselves.
const (
	rawPrefix = "locks/bench-raw/"
	apiPrefix = "locks/bench-consul-api/"
)

// Cleanup deletes the keys that the raw floor and consul/api's Lock leave.
func Cleanup(ctx context.Context, c *api.Client) error {
	w := (&api.WriteOptions{}).WithContext(ctx)
	if _, err := c.KV().DeleteTree(rawPrefix, w); err != nil {
		return err
	}
	_, err := c.KV().DeleteTree(apiPrefix, w)
	return err
}

// Result is what one run measured.
type Result struct {
	Impl      string        `json:"impl"`
	Workers   int           `json:"workers"`
	Cycles    int           `json:"cycles"`
	Seconds   float64       `json:"seconds"`
	PerSecond float64       `json:"cycles_per_second"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	// Max is the longest cycle; contended, the worst wait for the lock
	// (plus one hold): what fair queueing bounds.
	Max        time.Duration `json:"max_ns"`
	HandoffP50 time.Duration `json:"handoff_p50_ns,omitempty"`
	// AttemptsPerAcquire is the mean number of writes that tried to take the
	// key per successful acquire, from consullock's Observer: 1 means no
	// failed attempt, more is the cost of waiters racing (consullock only).
	AttemptsPerAcquire float64         `json:"attempts_per_acquire,omitempty"`
	Latencies          []time.Duration `json:"-"` // of each cycle, sorted
}

// Spec says how long a run lasts: Cycles lock cycles in all, or, when
// Cycles is 0, as many as Workers complete in Duration.
type Spec struct {
	Workers  int
	Cycles   int
	Duration time.Duration
}

// Run has workers take key, each in its own worker (a Locker, a consul/api
// Lock), until cycles lock cycles are done in all, and measures each cycle
// from the acquire call to the release's return. With more than one worker it
// also measures handoffs: from a holder's release call to the next holder's
// acquire returning. progress is called with the cycles done so far.
func Run(ctx context.Context, c *api.Client, impl Impl, key string, workers, cycles int, progress func(done int)) (Result, error) {
	return RunSpec(ctx, c, impl, key, Spec{Workers: workers, Cycles: cycles}, progress)
}

// RunSpec is Run for a Spec: a run by duration measures the steady rate, not
// the stragglers of a fixed count.
func RunSpec(ctx context.Context, c *api.Client, impl Impl, key string, spec Spec, progress func(done int)) (Result, error) {
	workers, cycles := spec.Workers, spec.Cycles
	if cycles == 0 {
		cycles = 1 << 62
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := time.AfterFunc(spec.Duration, cancel)
		defer stop.Stop()
	}
	res := Result{Impl: impl.Name, Workers: workers}
	count := &attemptCounter{}
	var (
		mu          sync.Mutex
		latencies   = make([]time.Duration, 0, min(cycles, 1<<16))
		handoffs    []time.Duration
		left        atomic.Int64
		lastRelease atomic.Int64 // unix nanos of the last release call
		firstErr    error
	)
	left.Store(int64(cycles))
	var wg sync.WaitGroup
	start := time.Now()
	var end atomic.Int64 // unix nanos when a timed run's clock stopped
	var shared func(context.Context, string, func()) error
	if impl.Shared {
		cycle, done, err := impl.New(c, count)
		if err != nil {
			return res, err
		}
		defer done()
		shared = cycle
	}
	for range workers {
		cycle, done := shared, func() {}
		if shared == nil {
			var err error
			if cycle, done, err = impl.New(c, count); err != nil {
				return res, err
			}
		}
		wg.Go(func() {
			defer done()
			for left.Add(-1) >= 0 {
				var acquired time.Time
				t0 := time.Now()
				err := cycle(ctx, key, func() {
					acquired = time.Now()
					if prev := lastRelease.Load(); workers > 1 && prev != 0 {
						mu.Lock()
						handoffs = append(handoffs, acquired.Sub(time.Unix(0, prev)))
						mu.Unlock()
					}
					lastRelease.Store(time.Now().UnixNano())
				})
				if spec.Cycles == 0 && ctx.Err() != nil { // the clock ran out during this cycle
					end.CompareAndSwap(0, time.Now().UnixNano())
					return
				}
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", impl.Name, err)
				}
				latencies = append(latencies, time.Since(t0))
				n := len(latencies)
				mu.Unlock()
				if err != nil {
					left.Store(0)
					return
				}
				if progress != nil {
					progress(n)
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	res.Seconds = time.Since(start).Seconds()
	if spec.Cycles == 0 {
		res.Seconds = spec.Duration.Seconds()
	}
	slices.Sort(latencies)
	slices.Sort(handoffs)
	res.Cycles, res.Latencies = len(latencies), latencies
	res.PerSecond = float64(res.Cycles) / res.Seconds
	res.P50, res.P99, res.Max = Percentile(latencies, 50), Percentile(latencies, 99), Percentile(latencies, 100)
	res.HandoffP50 = Percentile(handoffs, 50)
	if n := count.acquires.Load(); n > 0 {
		res.AttemptsPerAcquire = float64(count.attempts.Load()) / float64(n)
	}
	return res, nil
}

// Percentile returns the p-th percentile of sorted durations, or 0.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

// attemptCounter is the Observer a run gives consullock's implementations.
type attemptCounter struct {
	consullock.NopObserver
	acquires, attempts atomic.Int64
}

func (a *attemptCounter) Acquired(e consullock.AcquireEvent) {
	if e.Err == nil {
		a.acquires.Add(1)
		a.attempts.Add(int64(e.Attempts))
	}
}
