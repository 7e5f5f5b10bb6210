package consullock

import (
	"context"
	"fmt"
	"time"
)

// Local turns: the goroutines of one Locker that want the same key queue
// for it in arrival order, and only the one whose turn it is contends in
// Consul. When a holder releases while others wait, the Locker keeps the key
// and hands it to the next of them, who takes it with one write (which
// gives it a new fencing token): a local handoff costs one consensus write
// instead of two. After maxHandoffs handoffs in a row the key is given back
// in Consul, so that other processes get their chance.

// maxHandoffs bounds how long a busy Locker keeps a key from other processes.
const maxHandoffs = 16

// keySlot is the local queue of a Locker for one key. Guarded by Locker.mu,
// except turn.
type keySlot struct {
	turn   chan struct{} // holds a token while a goroutine has the turn
	refs   int           // goroutines that have or wait for the turn
	kept   string        // session that kept the key for the next holder, if any
	token  uint64        // the kept key's last fencing token
	streak int           // handoffs in a row
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
	if slot.refs > 1 && slot.streak < maxHandoffs && s.lostErr == nil && lk.sess == s {
		slot.kept, slot.token = s.id, token
		slot.streak++
		return true
	}
	slot.streak = 0
	return false
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
		ctx, cancel := detached(context.Background())
		defer cancel()
		releaseKey(ctx, lk.conn, key, orphan, token)
	}
}
