package consullock

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Local turns: the goroutines of one Locker that want the same key queue
// for it in arrival order, and only the one whose turn it is contends in
// Consul. When a holder releases while others wait, the Locker keeps the key
// and hands it to the next of them, who takes it with one write (which
// gives it a new fencing token): a local handoff costs one consensus write
// instead of two. After maxHandoffs handoffs in a row the key is given back
// in Consul, so that other processes get their chance.

// maxHandoffs bounds how long a busy Locker keeps a key from other
// processes. After that many handoffs the key is given back, and the next
// local holder waits about three times as long as that give-back took (a
// round trip to the servers) before contending again, so that waiters of
// other processes, woken by the release, can take it first.
const (
	maxHandoffs = 64
	minYield    = time.Millisecond
	maxYield    = 50 * time.Millisecond
)

// keySlot is the local queue of a Locker for one key. Guarded by Locker.mu,
// except turn.
type keySlot struct {
	turn   chan struct{} // holds a token while a goroutine has the turn
	refs   int           // goroutines that have or wait for the turn
	kept   *session      // the session that kept the key for the next holder, if any
	token  uint64        // the kept key's last fencing token
	streak int           // handoffs in a row
	yield  time.Duration // the key was given back for others: how long the next holder waits
	undo   bool          // the turn is held by the undo of a failed acquire, not by a holder
}

// takeTurn waits for the local turn on key, until ctx ends or the deadline.
func (lk *Locker) takeTurn(ctx context.Context, key string, deadline time.Time) (*keySlot, error) {
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil, ErrClosed
	}
	slot := lk.slots[key]
	if slot == nil {
		slot = &keySlot{turn: make(chan struct{}, 1)}
		lk.slots[key] = slot
	}
	slot.refs++
	lk.mu.Unlock()
	select { // a free turn is taken even with no time left to wait
	case slot.turn <- struct{}{}:
		return slot, nil
	default:
	}
	lk.mu.Lock()
	wait := time.Until(deadline)
	if slot.undo {
		// Nobody holds the key: a failed acquire is undoing what it may
		// have got, which takes about a round trip once Consul answers.
		wait = max(wait, cleanupTimeout)
	}
	lk.mu.Unlock()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case slot.turn <- struct{}{}:
		if ctx.Err() != nil { // both were ready and select chose the turn
			lk.leave(key, slot, true)
			return nil, context.Cause(ctx)
		}
		return slot, nil
	case <-ctx.Done():
		lk.leave(key, slot, false)
		return nil, context.Cause(ctx)
	case <-timer.C:
		lk.leave(key, slot, false)
		return nil, fmt.Errorf("%w: held by this process for the whole acquire timeout (%v)", ErrNotAcquired, lk.s.AcquireTimeout)
	}
}

// undoing marks the turns of slots as held by the undo of a failed acquire,
// or no longer.
func (lk *Locker) undoing(slots []*keySlot, on bool) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	for _, slot := range slots {
		if slot != nil {
			slot.undo = on
		}
	}
}

// handOff decides, at a release, whether to keep the key for the next
// local waiter instead of giving it back in Consul.
func (lk *Locker) handOff(slot *keySlot, s *session, token uint64) bool {
	alive := s.Err() == nil // not under lk.mu: ending a session ends its leases
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if !lk.s.fair && slot.refs > 1 && slot.streak < maxHandoffs && alive && lk.sess == s {
		slot.kept, slot.token = s, token
		slot.streak++
		return true
	}
	if slot.refs > 1 && slot.streak >= maxHandoffs {
		slot.yield = maxYield // until gaveBack measures the round trip
	}
	slot.streak = 0
	return false
}

// gaveBack records that a release gave the key back in Consul, which took
// took: if it ended a run of handoffs, the next local holder yields.
func (lk *Locker) gaveBack(slot *keySlot, took time.Duration) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if slot.yield > 0 {
		slot.yield = min(max(3*took, minYield), maxYield)
	}
}

// yieldFor returns, once, how long the goroutine with the turn should let
// other processes have the key first.
func (lk *Locker) yieldFor(slot *keySlot) time.Duration {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	y := slot.yield
	slot.yield = 0
	return y
}

// took records that the goroutine with the turn holds the key under a lease.
func (lk *Locker) took(slot *keySlot) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	slot.kept = nil
}

// leave takes a goroutine out of key's queue, passing the turn on if it had
// it. The last to leave a key that was kept for a next holder who never took
// it gives the key back in Consul.
func (lk *Locker) leave(key string, slot *keySlot, hadTurn bool) {
	if hadTurn {
		<-slot.turn
	}
	lk.mu.Lock()
	slot.refs--
	var orphan *session
	token := uint64(0)
	if slot.refs == 0 {
		delete(lk.slots, key)
		orphan, token, slot.kept = slot.kept, slot.token, nil
	}
	lk.mu.Unlock()
	if orphan != nil {
		lk.releaseOrphan(key, orphan, token)
	}
}

// releaseOrphan gives back a key kept for a next holder who never came. The
// turn is no longer held, so only the exact write that kept it may be
// deleted: if another goroutine took the key meanwhile, it is theirs.
func (lk *Locker) releaseOrphan(key string, s *session, token uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := deleteIfUnchanged(ctx, lk.conn, key, token); err != nil {
		// Left to a renewed session, the key would be held for ever.
		s.abandon(fmt.Errorf("%w: could not give back %q: %w", ErrLockLost, key, err))
	}
}

// sortedOrder returns the positions of keys in the order of the keys: the
// order in which local turns are taken, so that two goroutines that want
// some of the same keys never wait for each other's.
func sortedOrder(keys []string) []int {
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(keys[a], keys[b]) })
	return order
}
