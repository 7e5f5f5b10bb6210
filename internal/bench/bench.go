// Package bench measures lock cycles against a real Consul agent: consullock's
// Locker and EphemeralLock, consul/api's Lock, and the floor of two raw KV
// writes, run side by side in one process against the same agent, for
// `consul-lock bench` and the go test benchmarks.
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// Impl is one way of taking and giving back a lock.
type Impl struct {
	Name string
	// ID names the implementation on a command line (bench -processes).
	ID string
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

// ContendedImpls are the implementations compared under contention: the
// raw floor is no lock, and gives way to the ticket floor.
func ContendedImpls() []Impl {
	return append([]Impl{TicketFloor}, Impls()[1:]...)
}

// ImplByID returns the implementation whose ID is id.
func ImplByID(id string) (Impl, bool) {
	for _, impl := range append(Impls(), TicketFloor) {
		if impl.ID == id {
			return impl, true
		}
	}
	return Impl{}, false
}

// LockerFair is a Locker per worker with fair queueing: waiters of all
// processes served in arrival order, a release waking one of them.
var LockerFair = Impl{Name: "consullock Locker, fair queue, one per worker", ID: "locker-fair", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return newLocker(c, o, consullock.WithFairQueueing())
}}

// LockerShared is one consullock Locker shared by all workers, as the
// goroutines of one process use it.
var LockerShared = Impl{Name: "consullock Locker, shared", ID: "locker-shared", Shared: true, New: Locker.New}

// RawFloor is two raw KV PUTs: the cost of one consensus write to take a
// lock and one to give it back.
var RawFloor = Impl{Name: "raw KV floor (2 PUTs)", ID: "raw", New: func(c *api.Client, _ consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
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

// TicketFloor is the floor of a fair lock that passes between processes in
// one write: a ticket lock on two raw keys, with no session and no safety
// (a holder that dies blocks it for good). A waiter draws a ticket (a
// check-and-set of KEY/tail, made while the lock is held, off the critical
// path) and waits with blocking queries until KEY/head shows its ticket; a
// release writes the next ticket to KEY/head. The next holder learns of that
// write from the query it waits on: a handoff is one write and one wake-up,
// the least that any lock on Consul can spend passing the key to a waiter
// of another process.
var TicketFloor = Impl{Name: "raw ticket floor (1 PUT a handoff)", ID: "raw-ticket", New: func(c *api.Client, _ consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
	return func(ctx context.Context, key string, inside func()) error {
		t := ticketLock{kv: c.KV(), tail: rawPrefix + key + "/tail", head: rawPrefix + key + "/head"}
		n, err := t.draw(ctx)
		if err != nil {
			return err
		}
		if err := t.await(ctx, n); err != nil {
			return err
		}
		inside()
		_, err = c.KV().Put(&api.KVPair{Key: t.head, Value: []byte(strconv.FormatUint(n+1, 10))}, (&api.WriteOptions{}).WithContext(ctx))
		return err
	}, func() {}, nil
}}

// ticketLock is TicketFloor's pair of keys: the next ticket to draw, and the
// ticket that holds the lock.
type ticketLock struct {
	kv         *api.KV
	tail, head string
}

// draw takes the next ticket with a check-and-set of the tail.
func (t ticketLock) draw(ctx context.Context) (uint64, error) {
	for {
		p, _, err := t.kv.Get(t.tail, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return 0, err
		}
		n, index := ticketOf(p), uint64(0)
		if p != nil {
			index = p.ModifyIndex
		}
		next := &api.KVPair{Key: t.tail, Value: []byte(strconv.FormatUint(n+1, 10)), ModifyIndex: index}
		ok, _, err := t.kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil || ok {
			return n, err
		}
	}
}

// await blocks until the head shows ticket n.
func (t ticketLock) await(ctx context.Context, n uint64) error {
	var index uint64
	for {
		p, meta, err := t.kv.Get(t.head, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
		if err != nil {
			return err
		}
		if ticketOf(p) == n {
			return nil
		}
		index = meta.LastIndex
	}
}

// ticketOf reads a ticket key; a missing one is ticket 0.
func ticketOf(p *api.KVPair) uint64 {
	if p == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(p.Value), 10, 64)
	return n
}

// Locker is consullock's Locker, one per worker, as separate processes use it.
var Locker = Impl{Name: "consullock Locker, one per worker", ID: "locker", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
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
var Ephemeral = Impl{Name: "consullock EphemeralLock", ID: "ephemeral", New: func(c *api.Client, o consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
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
var ConsulAPI = Impl{Name: "consul/api Lock", ID: "consul-api", New: func(c *api.Client, _ consullock.Observer) (func(context.Context, string, func()) error, func(), error) {
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
	// MaxWait is the longest wait for the lock: from an acquire call to
	// the lock held.
	MaxWait time.Duration `json:"max_wait_ns"`
	// MostTurns is the most acquires of others that came between one
	// acquire call and its lock held: the worst wait counted in turns,
	// which a stall of the machine does not lengthen as it does a wait in
	// time. In arrival order it stays below the number of workers.
	MostTurns int `json:"most_turns"`
	// MinShare is the fewest cycles a worker completed, over the mean of
	// all workers': 1 when every worker got its share, near 0 when one
	// starved.
	MinShare float64 `json:"min_share"`
	// Processes is true when each worker was an OS process of its own.
	Processes bool `json:"processes,omitempty"`
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
	Hold     time.Duration // how long each holder holds the lock
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
	if spec.Cycles == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Duration)
		defer cancel()
	}
	count := &attemptCounter{}
	var left atomic.Int64
	left.Store(int64(spec.Cycles))
	if spec.Cycles == 0 {
		left.Store(1 << 62)
	}
	var done atomic.Int64
	tick := func() {
		if progress != nil {
			progress(int(done.Add(1)))
		}
	}
	var shared func(context.Context, string, func()) error
	if impl.Shared {
		cycle, free, err := impl.New(c, count)
		if err != nil {
			return Result{}, err
		}
		defer free()
		shared = cycle
	}
	logs := make([][]Cycle, spec.Workers)
	errs := make([]error, spec.Workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range spec.Workers {
		cycle, free := shared, func() {}
		if shared == nil {
			var err error
			if cycle, free, err = impl.New(c, count); err != nil {
				return Result{}, err
			}
		}
		wg.Go(func() {
			defer free()
			logs[w], errs[w] = runWorker(ctx, cycle, key, spec.Hold, &left, tick)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, fmt.Errorf("%s: %w", impl.Name, err)
	}
	seconds := time.Since(start).Seconds()
	if spec.Cycles == 0 {
		seconds = spec.Duration.Seconds()
	}
	return Merge(impl.Name, logs, count.acquires.Load(), count.attempts.Load(), seconds), nil
}

// Cycle is one lock cycle as a worker saw it, in Unix nanoseconds: the
// acquire called, the lock held, the release called, the release returned.
// A wait that the end of the run cut off has Acquired 0 and End the moment
// it was given up: it is no cycle, but it is a wait, and a worker starved
// for the whole run has no other.
type Cycle struct {
	Start    int64 `json:"s"`
	Acquired int64 `json:"a"`
	Released int64 `json:"r"`
	End      int64 `json:"e"`
}

// unfinished reports whether cy is a wait cut off by the end of the run.
func (cy Cycle) unfinished() bool { return cy.Acquired == 0 }

// runWorker runs cycles until ctx ends or left runs out, holding the lock
// for hold each time. A cycle that ctx ended is not counted, but a wait it
// cut off is logged as unfinished; another error ends the run.
func runWorker(ctx context.Context, cycle func(context.Context, string, func()) error, key string, hold time.Duration, left *atomic.Int64, tick func()) ([]Cycle, error) {
	var logs []Cycle
	for left.Add(-1) >= 0 {
		var cy Cycle
		cy.Start = time.Now().UnixNano()
		err := cycle(ctx, key, func() {
			cy.Acquired = time.Now().UnixNano()
			if hold > 0 {
				time.Sleep(hold) // the work done under the lock
			}
			cy.Released = time.Now().UnixNano()
		})
		if ctx.Err() != nil { // the clock ran out during this cycle
			if cy.unfinished() {
				logs = append(logs, Cycle{Start: cy.Start, End: time.Now().UnixNano()})
			}
			return logs, nil
		}
		if err != nil {
			left.Store(0)
			return logs, err
		}
		cy.End = time.Now().UnixNano()
		logs = append(logs, cy)
		tick()
	}
	return logs, nil
}

// Worker is what one worker process measured (bench -processes).
type Worker struct {
	Cycles   []Cycle `json:"cycles"`
	Acquires int64   `json:"acquires"`
	Attempts int64   `json:"attempts"`
	Err      string  `json:"error,omitempty"`
}

// RunWorker is one worker process of a run by processes: it cycles on key
// with its own lock client until ctx ends.
func RunWorker(ctx context.Context, c *api.Client, impl Impl, key string, hold time.Duration) Worker {
	count := &attemptCounter{}
	cycle, free, err := impl.New(c, count)
	if err != nil {
		return Worker{Err: err.Error()}
	}
	defer free()
	var left atomic.Int64
	left.Store(1 << 62)
	logs, err := runWorker(ctx, cycle, key, hold, &left, func() {})
	w := Worker{Cycles: logs, Acquires: count.acquires.Load(), Attempts: count.attempts.Load()}
	if err != nil {
		w.Err = err.Error()
	}
	return w
}

// Merge makes the Result of a run from each worker's cycles: latencies,
// handoffs (from a release call to the next holder's lock held, in the
// order the lock was held), the worst wait and each worker's share.
func Merge(impl string, workers [][]Cycle, acquires, attempts int64, seconds float64) Result {
	res := Result{Impl: impl, Workers: len(workers), Seconds: seconds}
	all, cut, fewest := split(workers)
	res.Cycles = len(all)
	for _, cy := range cut {
		res.MaxWait = max(res.MaxWait, time.Duration(cy.End-cy.Start))
	}
	if res.Cycles == 0 {
		return res
	}
	res.Latencies = make([]time.Duration, 0, len(all))
	for _, cy := range all {
		res.Latencies = append(res.Latencies, time.Duration(cy.End-cy.Start))
		res.MaxWait = max(res.MaxWait, time.Duration(cy.Acquired-cy.Start))
	}
	slices.Sort(res.Latencies)
	if len(workers) > 1 {
		slices.SortFunc(all, func(a, b Cycle) int { return cmp.Compare(a.Acquired, b.Acquired) })
		handoffs := make([]time.Duration, 0, len(all))
		for i := 1; i < len(all); i++ {
			handoffs = append(handoffs, time.Duration(all[i].Acquired-all[i-1].Released))
		}
		slices.Sort(handoffs)
		res.HandoffP50 = Percentile(handoffs, 50)
		res.MostTurns = mostTurns(all, cut)
	}
	res.PerSecond = float64(res.Cycles) / seconds
	res.P50, res.P99, res.Max = Percentile(res.Latencies, 50), Percentile(res.Latencies, 99), Percentile(res.Latencies, 100)
	res.MinShare = float64(fewest) / (float64(res.Cycles) / float64(len(workers)))
	if acquires > 0 {
		res.AttemptsPerAcquire = float64(attempts) / float64(acquires)
	}
	return res
}

// split sorts the workers' cycles into those completed and the waits cut
// off, and counts the fewest cycles a worker completed.
func split(workers [][]Cycle) (all, cut []Cycle, fewest int) {
	fewest = -1
	for _, w := range workers {
		done := 0
		for _, cy := range w {
			if cy.unfinished() {
				cut = append(cut, cy)
				continue
			}
			all = append(all, cy)
			done++
		}
		if fewest < 0 || done < fewest {
			fewest = done
		}
	}
	return all, cut, fewest
}

// mostTurns is the most cycles of all, sorted by Acquired, that were
// acquired while one of them waited (after its Start, before its Acquired),
// or while a wait of cut waited until the end of the run.
func mostTurns(all, cut []Cycle) int {
	since := func(t int64) int {
		i, _ := slices.BinarySearchFunc(all, t, func(c Cycle, t int64) int { return cmp.Compare(c.Acquired, t) })
		return i
	}
	most := 0
	for i, cy := range all {
		most = max(most, i-since(cy.Start))
	}
	for _, cy := range cut {
		most = max(most, since(cy.End)-since(cy.Start))
	}
	return most
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
