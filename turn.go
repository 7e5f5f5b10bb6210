package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
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
	kept   string        // session that kept the key for the next holder, if any
	token  uint64        // the kept key's last fencing token
	streak int           // handoffs in a row
	yield  time.Duration // the key was given back for others: how long the next holder waits
}

// takeTurn waits for the local turn on key, until ctx ends or the deadline.
func (lk *Locker) takeTurn(ctx context.Context, key string, deadline time.Time) (*keySlot, error) {
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil, fmt.Errorf("consullock: %w", errLockerClosed)
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
	timer := time.NewTimer(time.Until(deadline))
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
		return nil, fmt.Errorf("%w: %q held by this process for the whole acquire timeout (%v)", ErrNotAcquired, key, lk.cfg.AcquireTimeout)
	}
}

// handOff decides, at a release, whether to keep the key for the next
// local waiter instead of giving it back in Consul.
func (lk *Locker) handOff(slot *keySlot, s *sharedSession, token uint64) bool {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if !lk.cfg.Fair && slot.refs > 1 && slot.streak < maxHandoffs && s.lostErr == nil && lk.sess == s {
		slot.kept, slot.token = s.id, token
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
	slot.kept = ""
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
	orphan, token := "", uint64(0)
	if slot.refs == 0 {
		delete(lk.slots, key)
		orphan, token, slot.kept = slot.kept, slot.token, ""
	}
	lk.mu.Unlock()
	if orphan != "" {
		lk.releaseOrphan(key, orphan, token)
	}
}

// releaseOrphan gives back a key kept for a next holder who never came. The
// turn is no longer held, so only the exact write that kept it may be
// deleted: if another goroutine took the key meanwhile, it is theirs.
func (lk *Locker) releaseOrphan(key, session string, token uint64) {
	ctx, cancel := detached(context.Background())
	defer cancel()
	if _, err := deleteIfUnchanged(ctx, lk.conn, key, token); err == nil {
		return
	}
	// Left to a renewed session, the key would be held for ever.
	lk.mu.Lock()
	s := lk.sess
	lk.mu.Unlock()
	if s != nil && s.id == session {
		s.end(fmt.Errorf("%w: could not give back %q", ErrLockLost, key))
	}
	destroySession(ctx, lk.conn, session)
}

// giveBackAbandoned returns the abandoned hook (see kvTxnDetached) of keys
// that the Locker's session may take for one goroutine after another. The
// abandoned write may have applied after the next local holder took a key
// with the same session, leaving the key at the abandoned write's index:
// deleting it then would free the next holder's lock under it. So each key
// is given back with its local turn in hand, once no lease of the Locker
// holds it (a lease that held it meanwhile has given it back already), one
// key at a time, so that no turn is held while waiting for another.
func (lk *Locker) giveBackAbandoned(keys ...string) func([]*api.KVPair) {
	return func(results []*api.KVPair) {
		ctx, cancel := detached(context.Background())
		defer cancel()
		for i, key := range keys {
			slot, err := lk.takeTurn(ctx, key, time.Now().Add(cleanupTimeout))
			if err != nil {
				continue // a closed Locker: destroying its session frees the key
			}
			deleteIfUnchanged(ctx, lk.conn, key, results[i].ModifyIndex)
			lk.leave(key, slot, true)
		}
	}
}
