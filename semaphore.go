package consullock

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
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
// loss notification, a maximum lifespan, the Locker's value. A cycle costs
// one read and two writes; waiting is a blocking query on the slots, not
// polling, and the waiters of one client share one (listwatch.go). Every
// holder must use the same limit, which each slot records in its flags: a
// holder that finds a slot held under another limit gets an error wrapping
// ErrInvalidOption.
type Semaphore struct {
	lk     *Locker
	key    string
	limit  int
	prefix string
}

// Semaphore returns the semaphore of the given limit on the key that the
// Locker's KeyPattern makes of name. It validates and talks to no one. A
// Locker built WithFairQueueing refuses it: its slots would not be queued;
// so does one built WithConsulAPILayout, whose layout slots cannot have.
func (lk *Locker) Semaphore(name string, limit int) (*Semaphore, error) {
	if lk.s.fair {
		return nil, wrapOp("semaphore", name, fmt.Errorf("%w: Semaphore on a Locker built WithFairQueueing: its slots would not be queued", ErrInvalidOption))
	}
	if lk.s.apiLayout {
		return nil, wrapOp("semaphore", name, fmt.Errorf("%w: Semaphore on a Locker built WithConsulAPILayout: consul/api's Semaphore keeps its holders in one key, which slots cannot share", ErrInvalidOption))
	}
	if limit < 1 || limit > MaxSemaphoreLimit {
		return nil, wrapOp("semaphore", name, fmt.Errorf("%w: semaphore limit %d outside [1, %d]", ErrInvalidOption, limit, MaxSemaphoreLimit))
	}
	key, err := lk.s.keyOf(name)
	if err != nil {
		return nil, wrapOp("semaphore", name, err)
	}
	return &Semaphore{lk: lk, key: key, limit: limit, prefix: key + "/slot-"}, nil
}

// Acquire takes a free slot, waiting up to the Locker's acquire timeout for
// one; the error wraps ErrNotAcquired when all stayed held that long.
func (sem *Semaphore) Acquire(ctx context.Context) (*Lease, error) {
	start, attempts := time.Now(), 0
	lease, err := sem.acquire(ctx, &attempts)
	err = wrapOp("acquire", sem.key, err)
	var leases []*Lease
	if lease != nil {
		leases = []*Lease{lease}
	}
	observeAcquired(sem.lk.s.Observer, []string{sem.key}, start, attempts, leases, err)
	return lease, err
}

func (sem *Semaphore) acquire(ctx context.Context, attempts *int) (*Lease, error) {
	deadline := deadlineAfter(sem.lk.s.AcquireTimeout)
	delay := &keyWatch{deadline: deadline} // paces takes while a lock delay keeps a slot
	var index uint64
	for {
		held, next, err := sem.heldSlots(ctx, index, deadline)
		switch {
		case errors.Is(err, errDeadline):
			return nil, sem.notAcquired()
		case err != nil:
			return nil, err
		}
		lease, delayed, err := sem.takeFree(ctx, held, deadline, attempts)
		switch {
		case lease != nil || err != nil:
			return lease, err
		case delayed:
			if err := delay.outLockDelay(ctx); errors.Is(err, errDeadline) {
				return nil, sem.notAcquired()
			} else if err != nil {
				return nil, err
			}
			index = 0
			continue
		}
		if index == 0 {
			sem.contended(held)
		}
		index = next // every free slot was taken by others just now: wait for a change
	}
}

func (sem *Semaphore) notAcquired() error {
	return fmt.Errorf("%w: all %d slots held for the whole acquire timeout (%v)", ErrNotAcquired, sem.limit, sem.lk.s.AcquireTimeout)
}

// heldSlots lists the held slots and their sessions (at once when index is
// 0, else once the slots change or the wait ends: the waiters of a client
// share one blocking list, see listwatch.go), retrying passing failures
// until the deadline, and checks that their holders agree on the limit. It
// returns errDeadline when the deadline passes while it waits.
func (sem *Semaphore) heldSlots(ctx context.Context, index uint64, deadline time.Time) (map[string]string, uint64, error) {
	pairs, last, err := sem.listSlots(ctx, index, deadline)
	switch {
	case errors.Is(err, errDeadline), err != nil && ctx.Err() != nil:
		return nil, 0, err
	case err != nil:
		return nil, 0, consulError(err)
	}
	held := map[string]string{}
	for _, p := range pairs {
		if p.Session == "" {
			continue
		}
		if p.Flags != 0 && p.Flags != uint64(sem.limit) {
			return nil, 0, fmt.Errorf("%w: semaphore used with limit %d here and %d by session %s",
				ErrInvalidOption, sem.limit, p.Flags, p.Session)
		}
		held[p.Key] = p.Session
	}
	return held, nextIndex(index, last), nil
}

// listSlots lists the slots: at once when index is 0, else once they
// changed since index.
func (sem *Semaphore) listSlots(ctx context.Context, index uint64, deadline time.Time) (api.KVPairs, uint64, error) {
	c := sem.lk.conn
	switch {
	case index != 0 && !time.Now().Before(deadline): // an acquire that tries once
		return nil, 0, errDeadline
	case index != 0:
		return awaitList(ctx, c, sem.prefix, index, deadline)
	}
	var pairs api.KVPairs
	var meta *api.QueryMeta
	err := retry(ctx, deadline, func() error {
		return c.call(ctx, func() (err error) {
			pairs, meta, err = c.c.KV().List(sem.prefix, c.query(ctx, api.QueryOptions{}))
			return err
		})
	})
	if err != nil {
		return nil, 0, err
	}
	return pairs, meta.LastIndex, nil
}

// contended tells the Observer, once an acquire, that it waits: every slot
// was held, by the sessions in held (the first slot's holder is named).
func (sem *Semaphore) contended(held map[string]string) {
	if o := sem.lk.s.Observer; o != nil && len(held) > 0 {
		first := slices.Min(slices.Collect(maps.Keys(held)))
		o.Contended(ContendEvent{Key: sem.key, Holder: held[first]})
	}
}

// takeFree tries the slots that looked free, from a random one on so that
// holders spread out, and returns a lease, or nil when none was taken;
// delayed when a lock delay kept one of them.
func (sem *Semaphore) takeFree(ctx context.Context, held map[string]string, deadline time.Time, attempts *int) (lease *Lease, delayed bool, err error) {
	lk := sem.lk
	start := rand.IntN(sem.limit)
	for i := range sem.limit {
		key := sem.prefix + strconv.Itoa((start+i)%sem.limit)
		if held[key] != "" {
			continue
		}
		slot, err := lk.takeTurn(ctx, key, time.Now()) // another goroutine of ours has it: next
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return nil, false, err
			}
			continue
		}
		a := lk.attempt([]string{key})
		a.deadline, a.flags = deadline, uint64(sem.limit)
		s, res, err := a.tryTake(ctx)
		*attempts += a.attempts
		switch {
		case err != nil && a.pending != nil:
			go func() { // the turn goes with the take in doubt
				a.pending()
				lk.leave(key, slot, true)
			}()
			return nil, false, err
		case err != nil:
			lk.leave(key, slot, true)
			return nil, false, err
		case res.taken():
			if leases := lk.register(s, a, []*keySlot{slot}, res.tokens); leases != nil {
				return leases[0], false, nil
			}
			// The session ended as the slot was taken: look again.
			delayed = true
		case res.delayed:
			delayed = true
		}
		lk.leave(key, slot, true)
	}
	return nil, delayed, nil
}
