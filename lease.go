package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// Lease is one lock held through a Locker, from Acquire until Release or a
// loss. It behaves as an EphemeralLock does once acquired: the same loss
// detection, Err, fencing and release, from the same code. Its methods are
// safe for concurrent use.
//
// A Lease's session is shared with the Locker's other leases, and a key may
// pass from one lease to the next without leaving the session; everything
// that concerns this lease alone (CheckOp, PutFenced, the loss watch, the
// release) is conditional on the key's index still being this lease's token.
type Lease struct {
	h    *held
	lk   *Locker
	slot *keySlot // the Locker's local queue for the key; the lease has its turn
}

// Key returns the Consul key of the lock.
func (l *Lease) Key() string { return l.h.key }

// Session returns the ID of the Locker's session that holds the lock.
func (l *Lease) Session() string { return l.h.sess.id }

// Token returns the fencing token of the lease: the Consul index of the
// write that took the key, strictly increasing across the key's holders.
func (l *Lease) Token() uint64 { return l.h.token }

// Lost returns a channel that is closed when the lease ends: released, or
// lost because its key was deleted, taken over or written to (noticed within
// about a round trip), because its maximum lifespan passed, or because the
// Locker's session was lost or reached its local deadline without a
// confirmed renewal. Err tells a loss from a release.
func (l *Lease) Lost() <-chan struct{} { return l.h.lost }

// Err returns why the lease was lost, an error wrapping ErrLockLost, or nil
// while it is held and after a Release. Like EphemeralLock.Err, it checks
// the local deadlines itself (the maximum lifespan, the session's renewal),
// so a holder that calls Err before each step never takes one after them.
func (l *Lease) Err() error { return l.h.Err() }

// CheckOp returns a transaction operation that fails unless the key is still
// as this lease took it (its index is the lease's token): see
// EphemeralLock.CheckOp. It fails once the lease has passed the key on.
func (l *Lease) CheckOp() *api.KVTxnOp { return l.h.CheckOp() }

// PutFenced writes value under key only if the lease still holds its lock;
// see EphemeralLock.PutFenced.
func (l *Lease) PutFenced(ctx context.Context, key string, value []byte) error {
	return l.h.PutFenced(ctx, key, value)
}

// Release gives the lock back in one consensus write: it hands the key to
// the first waiter of another process in line, or deletes it, only if it is
// still as this lease took it; when another goroutine of the Locker waits
// for the key, it hands it over without a write (see Locker).
// Like EphemeralLock.Release it completes even when ctx is already
// cancelled, trying for up to 10 s, and a second Release while one is in
// flight returns the first one's outcome. It is idempotent; after a loss it
// does nothing. A failed Release may be retried; if it is not, the Locker
// gives the key back when its maximum lifespan passes.
func (l *Lease) Release(ctx context.Context) error { return l.h.Release(ctx) }

// release gives the key back for Release, or keeps it for the next local
// holder.
func (l *Lease) release(ctx context.Context, h *held) error {
	if l.lk.handOff(l.slot, h.sess, h.token) {
		return nil
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	start := time.Now()
	err := giveOn(ctx, l.lk.conn, h.key, h.sess.id, h.token, h.queue, h.eager)
	l.lk.gaveBack(l.slot, time.Since(start))
	return err
}

// finish gives back the key of a lease that ended while its session may
// still hold it (the lease still has the turn, so a key its session holds
// is its own), and passes the local turn on.
func (l *Lease) finish(h *held, giveBack bool) {
	if giveBack {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		if err := deleteIfHeld(ctx, l.lk.conn, h.key, h.sess.id); err != nil {
			// Left to a renewed session, the key would be held for ever.
			h.sess.abandon(fmt.Errorf("%w: could not give back %q: %w", ErrLockLost, h.key, err))
		}
		cancel()
	}
	l.lk.leave(h.key, l.slot, true)
}
