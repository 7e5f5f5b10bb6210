package consullock

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// MaxSemaphoreLimit bounds a Semaphore's holders, to keep the slot list that
// every acquire reads small.
const MaxSemaphoreLimit = 256

// Semaphore lets up to a limit of holders hold one name at once. Each
// holder holds one of the name's slots, an ordinary lock key
// (KEY/slot-0 ... KEY/slot-<limit-1>) taken with the Locker's session, so a
// semaphore lease has everything a lock's has: a fencing token (per slot),
// loss notification, a maximum lifespan. A cycle costs one read and two
// writes; waiting is a blocking query on the slots, not polling. Every
// holder must use the same limit: a holder that finds a slot held under
// another limit gets an error wrapping ErrInvalidOption.
type Semaphore struct {
	lk     *Locker
	key    string
	limit  int
	prefix string
}

// Semaphore returns the semaphore of the given limit on the key that the
// Locker's KeyPattern makes of name. It validates and talks to no one.
func (lk *Locker) Semaphore(name string, limit int) (*Semaphore, error) {
	if limit < 1 || limit > MaxSemaphoreLimit {
		return nil, fmt.Errorf("%w: semaphore limit %d outside [1, %d]", ErrInvalidOption, limit, MaxSemaphoreLimit)
	}
	key, err := lockKey(lk.cfg.KeyPattern, name)
	if err != nil {
		return nil, err
	}
	return &Semaphore{lk: lk, key: key, limit: limit, prefix: key + "/slot-"}, nil
}

// Acquire takes a free slot, waiting up to the Locker's acquire timeout for
// one; the error wraps ErrNotAcquired when all stayed held that long.
func (sem *Semaphore) Acquire(ctx context.Context) (*Lease, error) {
	start, attempts := time.Now(), 0
	lease, err := sem.acquire(ctx, &attempts)
	observeAcquired(sem.lk.cfg.Observer, []string{sem.key}, start, attempts, []*Lease{lease}, err)
	return lease, err
}

func (sem *Semaphore) acquire(ctx context.Context, attempts *int) (*Lease, error) {
	deadline := deadlineAfter(sem.lk.cfg.AcquireTimeout)
	var index uint64
	for {
		held, next, err := sem.heldSlots(ctx, index, deadline)
		switch {
		case errors.Is(err, errDeadline):
			return nil, fmt.Errorf("%w: %q: all %d slots held for the whole acquire timeout (%v)",
				ErrNotAcquired, sem.key, sem.limit, sem.lk.cfg.AcquireTimeout)
		case err != nil:
			return nil, fmt.Errorf("consullock: acquire %q: %w", sem.key, err)
		}
		lease, again, err := sem.takeFree(ctx, held, deadline, attempts)
		switch {
		case lease != nil || err != nil:
			return lease, err
		case again: // with a new session, at once
			continue
		}
		if index == 0 {
			sem.contended(held)
		}
		index = next // every free slot was taken by others just now: wait for a change
	}
}

// heldSlots lists the held slots and their sessions (at once when index is
// 0, else once the slots change or the wait ends), and checks that their
// holders agree on the limit. It returns errDeadline when a wait would start
// past the deadline.
func (sem *Semaphore) heldSlots(ctx context.Context, index uint64, deadline time.Time) (map[string]string, uint64, error) {
	left := time.Until(deadline)
	if left <= 0 && index != 0 {
		return nil, 0, errDeadline
	}
	qctx, cancel := context.WithDeadline(ctx, deadline.Add(time.Second))
	defer cancel()
	c := sem.lk.conn
	pairs, meta, err := c.c.KV().List(sem.prefix, c.query(qctx, api.QueryOptions{WaitIndex: index, WaitTime: max(left-left/16, time.Millisecond)}))
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, context.Cause(ctx)
		}
		return nil, 0, explain(err)
	}
	held := map[string]string{}
	for _, p := range pairs {
		if p.Session == "" {
			continue
		}
		if h, err := ParseHolder(p.Value); err == nil && h.Limit != 0 && h.Limit != sem.limit {
			return nil, 0, fmt.Errorf("%w: semaphore %q is used with limit %d here and %d by session %s",
				ErrInvalidOption, sem.key, sem.limit, h.Limit, p.Session)
		}
		held[p.Key] = p.Session
	}
	return held, nextIndex(index, meta.LastIndex), nil
}

// contended tells the Observer, once an acquire, that it waits: every slot
// was held, by the sessions in held (the first slot's holder is named).
func (sem *Semaphore) contended(held map[string]string) {
	if o := sem.lk.cfg.Observer; o != nil && len(held) > 0 {
		first := slices.Min(slices.Collect(maps.Keys(held)))
		o.Contended(ContendEvent{Key: sem.key, Holder: held[first]})
	}
}

// takeFree tries the slots that looked free, from a random one on so that
// holders spread out, and returns a lease, or nil when all were taken; again
// when the Locker's session was gone and the slots are to be tried again at
// once with a new one.
func (sem *Semaphore) takeFree(ctx context.Context, held map[string]string, deadline time.Time, attempts *int) (lease *Lease, again bool, err error) {
	lk := sem.lk
	start := rand.IntN(sem.limit)
	for i := range sem.limit {
		key := sem.prefix + strconv.Itoa((start+i)%sem.limit)
		if held[key] != "" {
			continue
		}
		slot, err := lk.takeTurn(ctx, key, time.Now()) // another goroutine of ours has it: next
		if err != nil {
			if ctx.Err() != nil {
				return nil, false, context.Cause(ctx)
			}
			continue
		}
		s, err := lk.session(ctx, deadline)
		if err != nil {
			lk.leave(key, slot, true)
			return nil, false, err
		}
		acquiredAt := time.Now()
		*attempts++
		token, maybeTaken, err := takeKey(ctx, lk.conn, key, holderValue(sem.limit), s.id, deadline, lk.giveBackAbandoned(key))
		switch {
		case err != nil && strings.Contains(err.Error(), "nvalid session"):
			s.end(fmt.Errorf("%w: Consul no longer knows the Locker's session", ErrLockLost))
			lk.leave(key, slot, true)
			return nil, true, nil
		case err != nil:
			if maybeTaken {
				cctx, cancel := detached(ctx)
				deleteIfHeld(cctx, lk.conn, key, s.id)
				cancel()
			}
			lk.leave(key, slot, true)
			return nil, false, fmt.Errorf("consullock: acquire %q: %w", sem.key, err)
		case token != 0:
			lk.took(slot)
			if l := s.register(key, slot, token, acquiredAt); l != nil {
				return l, false, nil
			}
			lk.leave(key, slot, true) // the session ended just now
			return nil, true, nil
		}
		lk.leave(key, slot, true)
	}
	return nil, false, nil
}
