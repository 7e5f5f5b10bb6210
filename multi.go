package consullock

import (
	"context"
	"fmt"
	"time"
)

// MaxKeysPerAcquire bounds AcquireAll: Consul 1.16 takes 128 operations in a
// transaction, and giving the keys back takes two each.
const MaxKeysPerAcquire = 64

// AcquireAll takes the locks on all names at once or none: the keys are
// taken in one Consul transaction, so two callers that need the same keys,
// named in any order, never deadlock, and a caller never holds some keys
// while waiting for others. It returns one Lease per name, in the order of
// names, each with its own fencing token, to be released one by one (or kept
// longer, one by one). It waits up to the acquire timeout, on a blocking
// query on a key it found held. As with any locks, a goroutine that already
// holds one of these keys must not call AcquireAll for others: take them all
// in one call. A Locker built WithFairQueueing refuses it: its keys would
// not be queued.
func (lk *Locker) AcquireAll(ctx context.Context, names ...string) ([]*Lease, error) {
	keys, err := lk.keysOf(names)
	if err != nil {
		return nil, wrapOp("acquire", fmt.Sprint(names), err)
	}
	start := time.Now()
	a := lk.attempt(keys)
	leases, err := lk.acquire(ctx, a)
	observeAcquired(lk.s.Observer, keys, start, a.attempts, leases, err)
	return leases, err
}

// keysOf validates names and returns their keys.
func (lk *Locker) keysOf(names []string) ([]string, error) {
	if lk.s.fair {
		return nil, fmt.Errorf("%w: AcquireAll on a Locker built WithFairQueueing: its keys would not be queued", ErrInvalidOption)
	}
	if len(names) == 0 || len(names) > MaxKeysPerAcquire {
		return nil, fmt.Errorf("%w: AcquireAll takes 1 to %d names, not %d", ErrInvalidOption, MaxKeysPerAcquire, len(names))
	}
	keys := make([]string, len(names))
	seen := map[string]bool{}
	for i, n := range names {
		k, err := lk.s.keyOf(n)
		if err != nil {
			return nil, err
		}
		if seen[k] {
			return nil, fmt.Errorf("%w: %q named twice", ErrInvalidKey, n)
		}
		seen[k], keys[i] = true, k
	}
	return keys, nil
}
