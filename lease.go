package consullock

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Lease is one lock held through a Locker, from Acquire until Release or a
// loss. Its methods are safe for concurrent use.
type Lease struct {
	s        *sharedSession
	key      string
	token    uint64
	slot     *keySlot  // the Locker's local queue for the key
	deadline time.Time // the end of its maximum lifespan
	lost     chan struct{}
	watch    sync.Once

	mu      sync.Mutex
	maxLife *time.Timer // gives the key back when the maximum lifespan passes
	done    bool        // released or lost
	lostErr error
	onLost  func(error)
}

// Key returns the Consul key of the lock.
func (l *Lease) Key() string { return l.key }

// Session returns the ID of the Locker's session that holds the lock.
func (l *Lease) Session() string { return l.s.id }

// Token returns the fencing token of the lease: the Consul index of the
// write that took the key, strictly increasing across the key's holders.
func (l *Lease) Token() uint64 { return l.token }

// Lost returns a channel that is closed when the lease ends: released, or
// lost because its key was deleted or taken over (noticed within about a
// second), because its maximum lifespan passed, or because the Locker's
// session was lost or reached its local deadline without a confirmed
// renewal. Err tells a loss from a release. The first call starts watching
// the key in Consul: a lease that nobody asks about costs no query.
func (l *Lease) Lost() <-chan struct{} {
	l.watch.Do(func() {
		go watchHeld(l.s.ctx, l.s.lk.conn, l.key, l.s.id, l.token, l.lost, func(reason string) {
			l.lose(fmt.Errorf("%w: %q (token %d): %s", ErrLockLost, l.key, l.token, reason))
		})
	})
	return l.lost
}

// Err returns why the lease was lost, an error wrapping ErrLockLost, or nil
// while it is held and after a Release. Like EphemeralLock.Err, it checks
// the local deadlines itself (the maximum lifespan, the session's renewal),
// so a holder that calls Err before each step never takes one after them.
func (l *Lease) Err() error {
	if !time.Now().Before(l.deadline) {
		l.lose(l.lifespanErr())
	}
	l.s.checkExpiry()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}

func (l *Lease) lifespanErr() error {
	return fmt.Errorf("%w: %q (token %d): its maximum lifespan (LockTimeout %v) passed",
		ErrLockLost, l.key, l.token, l.s.lk.cfg.LockTimeout)
}

// Release gives the lock back in one consensus write that deletes the key
// only while this Locker's session holds it, or, when another goroutine of
// the Locker waits for the key, hands it over without a write (see Locker). Like EphemeralLock.Release it
// completes even when ctx is already cancelled, trying for up to 10 s. It is
// idempotent; after a loss it does nothing. A failed Release may be retried;
// if it is not, the Locker gives the key back when its maximum lifespan
// passes.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	done := l.done
	l.mu.Unlock()
	if done {
		return nil
	}
	if l.s.lk.handOff(l.slot, l.s, l.token) { // the next local holder takes the key as it is
		l.finish(nil)
		return nil
	}
	rctx, cancel := detached(ctx)
	defer cancel()
	if err := releaseKey(rctx, l.s.lk.conn, l.key, l.s.id, l.token); err != nil {
		return fmt.Errorf("consullock: release %q: %w", l.key, err)
	}
	l.finish(nil)
	return nil
}

// CheckOp returns a transaction operation that fails unless the lease's
// session still holds its key; see EphemeralLock.CheckOp.
func (l *Lease) CheckOp() *api.KVTxnOp {
	return checkHeld(l.key, l.s.id)
}

// PutFenced writes value under key only if the lease still holds its lock;
// see EphemeralLock.PutFenced.
func (l *Lease) PutFenced(ctx context.Context, key string, value []byte) error {
	return putFenced(ctx, l.s.lk.conn, l.CheckOp(), l.key, key, value)
}

// notify makes the lease call fn with the loss, for Hold.
func (l *Lease) notify(fn func(error)) {
	l.mu.Lock()
	l.onLost = fn
	err := l.lostErr
	l.mu.Unlock()
	if err != nil {
		fn(err)
	}
	l.Lost() // Hold must hear of a loss: start the watch
}

// expire ends a lease whose maximum lifespan passed: the holder is told
// first, then the key is given back.
func (l *Lease) expire() {
	l.lose(l.lifespanErr())
	ctx, cancel := detached(context.Background())
	defer cancel()
	if deleteIfHeld(ctx, l.s.lk.conn, l.key, l.s.id) != nil {
		// The key would stay held as long as the session is renewed.
		l.s.end(fmt.Errorf("%w: could not give back %q after its maximum lifespan", ErrLockLost, l.key))
		destroySession(ctx, l.s.lk.conn, l.s.id)
	}
}

// lose ends the lease with err.
func (l *Lease) lose(err error) { l.finish(err) }

// finish ends the lease once, err nil for a release: it passes the local
// turn on, and cancels Hold's context with the loss or errReleased.
func (l *Lease) finish(err error) {
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	l.done, l.lostErr = true, err
	notify, maxLife := l.onLost, l.maxLife
	l.mu.Unlock()
	if maxLife != nil {
		maxLife.Stop()
	}
	close(l.lost)
	l.s.unregister(l)
	l.s.lk.leave(l.key, l.slot, true)
	if notify != nil {
		if err == nil {
			err = errReleased
		}
		notify(err)
	}
}
