package consullock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
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
// in one call.
func (lk *Locker) AcquireAll(ctx context.Context, names ...string) ([]*Lease, error) {
	keys, err := lk.keysOf(names)
	if err != nil {
		return nil, err
	}
	start, attempts := time.Now(), 0
	leases, err := lk.acquireAll(ctx, keys, &attempts)
	observeAcquired(lk.cfg.Observer, keys, start, attempts, leases, err)
	return leases, err
}

// acquireAll takes the local turns of keys in sorted order, then the keys.
func (lk *Locker) acquireAll(ctx context.Context, keys []string, attempts *int) ([]*Lease, error) {
	deadline := deadlineAfter(lk.cfg.AcquireTimeout)
	order := slices.Clone(keys)
	slices.Sort(order) // local turns in one order: no deadlock between goroutines
	slots := map[string]*keySlot{}
	leaveAll := func() {
		for k, s := range slots {
			lk.leave(k, s, true)
		}
	}
	for _, k := range order {
		slot, err := lk.takeTurn(ctx, k, deadline)
		if err != nil {
			leaveAll()
			return nil, err
		}
		slots[k] = slot
	}
	leases, err := lk.contendAll(ctx, keys, slots, deadline, attempts)
	if err != nil {
		leaveAll()
		return nil, fmt.Errorf("consullock: acquire %q: %w", keys, err)
	}
	return leases, nil
}

// keysOf validates names and returns their keys.
func (lk *Locker) keysOf(names []string) ([]string, error) {
	if len(names) == 0 || len(names) > MaxKeysPerAcquire {
		return nil, fmt.Errorf("%w: AcquireAll takes 1 to %d names, not %d", ErrInvalidOption, MaxKeysPerAcquire, len(names))
	}
	keys := make([]string, len(names))
	seen := map[string]bool{}
	for i, n := range names {
		k, err := lockKey(lk.cfg.KeyPattern, n)
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

// contendAll takes every key in one transaction, waiting for a key found
// held before trying again.
func (lk *Locker) contendAll(ctx context.Context, keys []string, slots map[string]*keySlot, deadline time.Time, attempts *int) ([]*Lease, error) {
	for {
		s, err := lk.session(ctx, deadline)
		if err != nil {
			return nil, err
		}
		acquiredAt := time.Now()
		*attempts++
		tokens, held, err := takeKeys(ctx, lk.conn, keys, lk.cfg.Value(), s.id, deadline, lk.giveBackAbandoned(keys...))
		switch {
		case err != nil && strings.Contains(err.Error(), "nvalid session"):
			s.end(fmt.Errorf("%w: Consul no longer knows the Locker's session", ErrLockLost))
			continue
		case err != nil:
			cctx, cancel := detached(ctx) // a failed take may have been applied
			for _, k := range keys {
				deleteIfHeld(cctx, lk.conn, k, s.id)
			}
			cancel()
			return nil, err
		case tokens != nil:
			if leases := lk.registerAll(s, keys, slots, tokens, acquiredAt); leases != nil {
				return leases, nil
			}
			continue // the session ended just now
		}
		w := &keyWatch{conn: lk.conn, key: keys[held], deadline: deadline, onHolder: contended(lk.cfg.Observer, keys[held])}
		switch err := w.untilFree(ctx); {
		case errors.Is(err, errDeadline):
			return nil, notAcquiredError(keys[held], w.holder, lk.cfg.AcquireTimeout)
		case err != nil:
			return nil, err
		}
	}
}

// registerAll makes leases of keys just taken together with s, or none
// when s ended meanwhile.
func (lk *Locker) registerAll(s *sharedSession, keys []string, slots map[string]*keySlot, tokens []uint64, acquiredAt time.Time) []*Lease {
	ordered := make([]*keySlot, len(keys))
	for i, k := range keys {
		lk.took(slots[k])
		ordered[i] = slots[k]
	}
	return s.registerAll(keys, ordered, tokens, acquiredAt)
}

// takeKeys tries to take all keys for session in one transaction, retrying
// transient failures until deadline. It returns the tokens, or, when a key
// is held by another session or kept by a lock delay, nil and that key's
// position.
func takeKeys(ctx context.Context, c conn, keys []string, value []byte, session string, deadline time.Time, abandoned func([]*api.KVPair)) (tokens []uint64, held int, err error) {
	ops := make(api.KVTxnOps, len(keys))
	for i, k := range keys {
		ops[i] = &api.KVTxnOp{Verb: api.KVLock, Key: k, Value: value, Session: session}
	}
	err = retry(ctx, deadline, func() error {
		ok, resp, err := kvTxnDetached(ctx, c, ops, abandoned)
		switch {
		case err != nil:
			return err
		case ok:
			tokens = make([]uint64, len(keys))
			for i, r := range resp.Results {
				tokens[i] = r.ModifyIndex
			}
			return nil
		}
		for _, e := range resp.Errors {
			if !heldElsewhere(e.What) {
				return errors.New(e.What)
			}
			held = e.OpIndex
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("acquire keys: %w", explain(err))
	}
	return tokens, held, nil
}
