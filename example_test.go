package consullock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// Set the client once, in Defaults, instead of passing it to every lock.
// api.DefaultConfig reads CONSUL_HTTP_ADDR and the other CONSUL_* variables.
func Example_defaults() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	consullock.Defaults.Client = client

	lock, err := consullock.NewEphemeralLock("my/special/key")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(lock.Key())
	// Output: locks/ephemeral/my/special/key
}

// Hold acquires the lock, runs the function, and releases the lock however
// the function ends: python-consul-lock's `with lock.hold():`.
func ExampleEphemeralLock_Hold() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	lock, err := consullock.NewEphemeralLock("my/special/key",
		consullock.WithClient(client),
		consullock.WithAcquireTimeout(500*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	err = lock.Hold(context.Background(), func(ctx context.Context) error {
		fmt.Println("here be dragons")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: here be dragons
}

// Acquire and Release by hand; the deferred Release is the try/finally of
// python-consul-lock's second example.
func ExampleEphemeralLock_Acquire() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	lock, err := consullock.NewEphemeralLock("my/special/key",
		consullock.WithClient(client),
		consullock.WithAcquireTimeout(500*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := lock.Acquire(ctx); err != nil {
		log.Fatal(err) // wraps consullock.ErrNotAcquired if another holder kept it
	}
	defer lock.Release(ctx)
	fmt.Println("here be dragons")
	// Output: here be dragons
}

// TryAcquire does not fail hard: it reports whether the lock was taken, so the
// caller can react to another holder (python-consul-lock's fail_hard=False).
func ExampleEphemeralLock_TryAcquire() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	newLock := func() *consullock.EphemeralLock {
		lock, err := consullock.NewEphemeralLock("my/special/key",
			consullock.WithClient(client),
			consullock.WithAcquireTimeout(500*time.Millisecond))
		if err != nil {
			log.Fatal(err)
		}
		return lock
	}

	other := newLock() // someone else holds the key
	if err := other.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	defer other.Release(ctx)

	lock := newLock()
	acquired, err := lock.TryAcquire(ctx)
	if err != nil {
		log.Fatal(err) // a real failure: Consul unreachable, ACL denied, ...
	}
	defer lock.Release(ctx)
	if acquired {
		fmt.Println("here be dragons")
	} else {
		fmt.Println("someone else has the lock :\\ try again later")
	}
	// Output: someone else has the lock :\ try again later
}

// A resource outside Consul protects itself from a holder that lost the lock
// without noticing (a long GC pause, a frozen VM) by remembering the highest
// fencing token it has seen and refusing writes that carry a lower one.
func ExampleEphemeralLock_Token() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	store := &fencedStore{}
	ctx := context.Background()

	first, _ := consullock.NewEphemeralLock("my/fenced/key", consullock.WithClient(client))
	if err := first.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	staleToken := first.Token()
	first.Release(ctx) // as if the lock had been lost while its holder slept

	second, _ := consullock.NewEphemeralLock("my/fenced/key", consullock.WithClient(client))
	err = second.Hold(ctx, func(ctx context.Context) error {
		return store.write(second.Token(), "written by the second holder")
	})
	fmt.Println("second holder:", err)
	fmt.Println("first holder, waking up:", store.write(staleToken, "stale write"))
	fmt.Println("stored:", store.value)
	// Output:
	// second holder: <nil>
	// first holder, waking up: token too old: refused
	// stored: written by the second holder
}

// fencedStore stands for any storage that can compare a token with the
// highest it has stored, in the same atomic step as the write.
type fencedStore struct {
	highest uint64
	value   string
}

func (s *fencedStore) write(token uint64, value string) error {
	if token < s.highest {
		return errors.New("token too old: refused")
	}
	s.highest, s.value = token, value
	return nil
}

// A Locker shares one Consul session among all the locks of a process: a
// lock cycle is two consensus writes, and its goroutines that want the same
// key queue for it in the process.
func ExampleLocker_Hold() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.NewLocker(consullock.WithClient(client),
		consullock.WithAcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer locker.Close(ctx)

	err = locker.Hold(ctx, "billing/invoice-42", func(ctx context.Context) error {
		fmt.Println("charging invoice 42, once in the whole cluster")
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: charging invoice 42, once in the whole cluster
}

// Candidates campaign; the one that leads does the leader's work until it
// resigns or its term is lost.
func ExampleElection_Campaign() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	election, err := consullock.NewElection("scheduler", consullock.WithClient(client))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	term, err := election.Campaign(ctx, []byte("10.0.0.7:8080"))
	if err != nil {
		log.Fatal(err)
	}
	leader, _ := election.Leader(ctx)
	fmt.Printf("leading as %s\n", leader.Value)
	select {
	case <-term.Lost(): // stop acting as leader: another may lead now
	default:
	}
	term.Resign(ctx)
	// Output: leading as 10.0.0.7:8080
}

// AcquireAll takes several locks at once or none: two callers that need the
// same accounts, named in any order, never deadlock.
func ExampleLocker_AcquireAll() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.NewLocker(consullock.WithClient(client), consullock.WithAcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer locker.Close(ctx)

	leases, err := locker.AcquireAll(ctx, "accounts/alice", "accounts/bob")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("moving money between", leases[0].Key(), "and", leases[1].Key())
	for _, l := range leases {
		l.Release(ctx)
	}
	// Output: moving money between locks/ephemeral/accounts/alice and locks/ephemeral/accounts/bob
}

// A Semaphore lets up to N holders in at once.
func ExampleLocker_Semaphore() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.NewLocker(consullock.WithClient(client))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer locker.Close(ctx)

	encoders, err := locker.Semaphore("video-encoders", 2)
	if err != nil {
		log.Fatal(err)
	}
	first, _ := encoders.Acquire(ctx)
	second, _ := encoders.Acquire(ctx)
	_, err = encoders.Acquire(ctx) // a third must wait: here, not at all
	fmt.Println("third encoder refused:", errors.Is(err, consullock.ErrNotAcquired))
	first.Release(ctx)
	second.Release(ctx)
	// Output: third encoder refused: true
}

// With reentrancy, code that holds a lock can call code that takes the same
// lock, through the context Hold gives it.
func ExampleWithReentrancy() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.NewLocker(consullock.WithClient(client), consullock.WithReentrancy())
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer locker.Close(ctx)

	updateIndex := func(ctx context.Context) error {
		return locker.Hold(ctx, "search-index", func(context.Context) error { return nil }) // counted, not waited for
	}
	err = locker.Hold(ctx, "search-index", func(ctx context.Context) error {
		return updateIndex(ctx)
	})
	fmt.Println("nested holds:", err)
	// Output: nested holds: <nil>
}

// With fair queueing, a release always goes to the first waiter in Consul's
// line, never to the Locker's own next goroutine: use it when a busy
// process must not keep other processes waiting.
func ExampleWithFairQueueing() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.NewLocker(consullock.WithClient(client), consullock.WithFairQueueing(),
		consullock.WithAcquireTimeout(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer locker.Close(ctx)
	err = locker.Hold(ctx, "nightly-report", func(context.Context) error { return nil })
	fmt.Println("served in turn:", err)
	// Output: served in turn: <nil>
}

// A worker that does leader-only work: every replica runs this loop; the one
// that leads works with a context that ends when its term is lost, and
// campaigns again after, so that exactly one replica works at a time.
func ExampleElection_leaderOnlyWork() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	election, err := consullock.NewElection("reports/scheduler", consullock.WithClient(client))
	if err != nil {
		log.Fatal(err)
	}
	ctx, shutdown := context.WithCancel(context.Background()) // cancelled on SIGTERM, say
	defer shutdown()
	work := func(ctx context.Context, token uint64) {
		fmt.Println("leading: scheduling the reports")
		// Stop when ctx ends; fence writes with token (see ExampleEphemeralLock_Token).
		shutdown() // this example stops after one round
	}
	for ctx.Err() == nil {
		term, err := election.Campaign(ctx, []byte("worker-1"))
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(time.Second) // Consul failing for longer than its retries: campaign again soon
			}
			continue
		}
		leading, stop := context.WithCancel(ctx)
		go func() {
			select {
			case <-term.Lost(): // another replica may lead now: stop working
			case <-leading.Done():
			}
			stop()
		}()
		work(leading, term.Token())
		stop()
		term.Resign(context.WithoutCancel(ctx))
	}
	// Output: leading: scheduling the reports
}
