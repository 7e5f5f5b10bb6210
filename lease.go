package consullock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Lease is one lock held through a Locker, from Acquire until Release or a
// loss. Its methods are safe for concurrent use.
//
// A Lease's session is shared with the Locker's other leases, and a key may
// pass from one lease to the next without leaving the session; so everything
// that must concern this lease alone (CheckOp, PutFenced, the loss watch, the
// release) is conditional on the key's index still being this lease's token.
type Lease struct {
	s        *sharedSession
	key      string
	token    uint64
	slot     *keySlot  // the Locker's local queue for the key; the lease has its turn
	deadline time.Time // the end of its maximum lifespan
	acquired time.Time
	lost     chan struct{}
	watch    sync.Once
	ended    sync.Once // the turn is passed on once

	mu      sync.Mutex
	state   leaseState
	maxLife *time.Timer // ends the lease when the maximum lifespan passes
	lostErr error
	onLost  map[*func(error)]struct{} // Holds' cancellations, told of the end
	holds   int                       // reentrant holds beyond the first (see reentrant.go)

	// A loss that came while a Release was giving the key back, for the
	// Release to apply if it fails, and whether it leaves a key to give back.
	pending         error
	pendingGiveBack bool
}

type leaseState int

const (
	leaseHeld leaseState = iota
	leaseReleasing
	leaseReleased
	leaseLost
)

// Key returns the Consul key of the lock.
func (l *Lease) Key() string { return l.key }

// Session returns the ID of the Locker's session that holds the lock.
func (l *Lease) Session() string { return l.s.id }

// Token returns the fencing token of the lease: the Consul index of the
// write that took the key, strictly increasing across the key's holders.
func (l *Lease) Token() uint64 { return l.token }

// Lost returns a channel that is closed when the lease ends: released, or
// lost because its key was deleted, taken over or written to (noticed within
// about a second), because its maximum lifespan passed, or because the
// Locker's session was lost or reached its local deadline without a confirmed
// renewal. Err tells a loss from a release. The first call starts watching
// the key in Consul: a lease that nobody asks about costs no query.
func (l *Lease) Lost() <-chan struct{} {
	l.watch.Do(func() {
		go watchHeld(l.s.ctx, l.s.lk.conn, l.key, l.s.id, l.token, true, l.lost, func(reason string, stillHeld bool) {
			l.fail(fmt.Errorf("%w: %q (token %d): %s", ErrLockLost, l.key, l.token, reason), stillHeld)
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
		l.lose(l.lifespanErr(), true) // the maximum-lifespan timer gives the key back
	}
	if err := l.s.checkExpiry(); err != nil {
		l.fail(err, false) // as the session's end would have, had it come first
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}

// Release gives the lock back in one consensus write that deletes the key
// only if it is still as this lease took it, or, when another goroutine of
// the Locker waits for the key, hands it over without a write (see Locker).
// Like EphemeralLock.Release it completes even when ctx is already
// cancelled, trying for up to 10 s. It is idempotent; after a loss it does
// nothing. A failed Release may be retried; if it is not, the Locker gives
// the key back when its maximum lifespan passes.
func (l *Lease) Release(ctx context.Context) error {
	if !l.startRelease() {
		return nil
	}
	handedOff := l.s.lk.handOff(l.slot, l.s, l.token)
	if !handedOff {
		rctx, cancel := detached(ctx)
		start := time.Now()
		err := l.giveBack(rctx)
		cancel()
		l.s.lk.gaveBack(l.slot, time.Since(start))
		l.observeRelease(err)
		if err != nil {
			l.releaseFailed()
			return fmt.Errorf("consullock: release %q: %w", l.key, err)
		}
	}
	if handedOff {
		l.observeRelease(nil)
	}
	l.mu.Lock()
	l.state = leaseReleased
	notify := l.listeners()
	l.mu.Unlock()
	close(l.lost)
	for _, fn := range notify {
		fn(errReleased)
	}
	l.end(false)
	return nil
}

// CheckOp returns a transaction operation that fails unless the key is still
// as this lease took it (its index is the lease's token): see
// EphemeralLock.CheckOp. It fails once the lease has passed the key on.
func (l *Lease) CheckOp() *api.KVTxnOp {
	return &api.KVTxnOp{Verb: api.KVCheckIndex, Key: l.key, Index: l.token}
}

// PutFenced writes value under key only if the lease still holds its lock;
// see EphemeralLock.PutFenced. When Consul refuses the write, the key is no
// longer as the lease took it, so the lease is lost from then on.
func (l *Lease) PutFenced(ctx context.Context, key string, value []byte) error {
	l.mu.Lock()
	held := l.state == leaseHeld
	l.mu.Unlock()
	if !held {
		return fmt.Errorf("%w: %q is not held: fenced put %q refused", ErrLockLost, l.key, key)
	}
	err := putFenced(ctx, l.s.lk.conn, l.CheckOp(), l.key, key, value)
	if errors.Is(err, ErrLockLost) {
		l.fail(err, true) // gives the key back if the session still holds it
	}
	return err
}

// notify makes the lease call fn when it ends, with the loss or
// errReleased, for Hold (nested Holds of a reentrant lease each register);
// the returned function unregisters fn.
func (l *Lease) notify(fn func(error)) (unregister func()) {
	l.mu.Lock()
	if l.onLost == nil {
		l.onLost = map[*func(error)]struct{}{}
	}
	l.onLost[&fn] = struct{}{}
	err := l.lostErr
	l.mu.Unlock()
	if err != nil {
		fn(err)
	}
	l.Lost() // Hold must hear of a loss: start the watch
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.onLost, &fn)
	}
}

// listeners returns the functions to tell of the end. l.mu is held.
func (l *Lease) listeners() []func(error) {
	fns := make([]func(error), 0, len(l.onLost))
	for fn := range l.onLost {
		fns = append(fns, *fn)
	}
	return fns
}

func (l *Lease) lifespanErr() error {
	return fmt.Errorf("%w: %q (token %d): its maximum lifespan (LockTimeout %v) passed",
		ErrLockLost, l.key, l.token, l.s.lk.cfg.LockTimeout)
}

// startRelease reports whether a Release must give the key back: not when
// a reentrant hold ends (the outer ones go on), nor when the lease is no
// longer held. It counts the hold down, or marks the lease as being
// released, in the same critical section, so no reentrant Acquire can count
// a hold on a lease whose key is on its way back.
func (l *Lease) startRelease() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.holds > 0:
		l.holds--
		return false
	case l.state != leaseHeld:
		return false
	}
	l.state, l.pending = leaseReleasing, nil
	return true
}

// releaseFailed makes a lease whose key could not be given back held again,
// and applies what happened meanwhile: a loss that came during the attempt,
// or the end of its maximum lifespan.
func (l *Lease) releaseFailed() {
	l.mu.Lock()
	l.state = leaseHeld
	pending, giveBack := l.pending, l.pendingGiveBack
	l.pending = nil
	l.mu.Unlock()
	switch {
	case pending != nil && l.lose(pending, giveBack):
		// The holder hears of the loss now; giving the key back may take
		// as long again as the failed Release did, and is not its business.
		go l.end(giveBack)
	case pending == nil && !time.Now().Before(l.deadline): // its timer fired during the attempt
		go l.expire()
	}
}

// expire ends a lease whose maximum lifespan passed: the holder is told
// first, then the key is given back, then the turn passed on. A lease being
// released is left to its Release.
func (l *Lease) expire() {
	l.lose(l.lifespanErr(), true)
	l.mu.Lock()
	lost := l.state == leaseLost
	l.mu.Unlock()
	if lost {
		l.end(true)
	}
}

// fail marks a held lease lost with err and ends it, giving the key back
// when giveBack (the session may still hold it).
func (l *Lease) fail(err error, giveBack bool) {
	if l.lose(err, giveBack) {
		l.end(giveBack)
	}
}

// lose marks a held lease lost with err and tells whoever asked. It reports
// whether it did: a lease released or already lost is left as it is, and a
// lease being released keeps the loss (and whether the key is to be given
// back) for its Release, should that fail.
func (l *Lease) lose(err error, giveBack bool) bool {
	l.mu.Lock()
	if l.state == leaseReleasing && l.pending == nil {
		l.pending, l.pendingGiveBack = err, giveBack
	}
	if l.state != leaseHeld {
		l.mu.Unlock()
		return false
	}
	l.state, l.lostErr = leaseLost, err
	notify := l.listeners()
	l.mu.Unlock()
	if o := l.s.lk.cfg.Observer; o != nil { // told first: when Lost fires, metrics agree
		o.Lost(LostEvent{Key: l.key, Token: l.token, Held: time.Since(l.acquired), Cause: err})
	}
	close(l.lost)
	for _, fn := range notify {
		fn(err)
	}
	return true
}

func (l *Lease) observeRelease(err error) {
	if o := l.s.lk.cfg.Observer; o != nil {
		o.Released(ReleaseEvent{Key: l.key, Token: l.token, Held: time.Since(l.acquired), Err: err})
	}
}

// end finishes the lease once: it gives the key back when asked (the lease
// still has the turn, so a key its session holds is its own), and passes the
// local turn on.
func (l *Lease) end(giveBack bool) {
	l.ended.Do(func() {
		l.mu.Lock()
		maxLife := l.maxLife
		l.mu.Unlock()
		maxLife.Stop()
		if giveBack {
			ctx, cancel := detached(context.Background())
			if deleteIfHeld(ctx, l.s.lk.conn, l.key, l.s.id) != nil {
				// Left to a renewed session, the key would be held for ever.
				l.s.end(fmt.Errorf("%w: could not give back %q", ErrLockLost, l.key))
				destroySession(ctx, l.s.lk.conn, l.s.id)
			}
			cancel()
		}
		l.s.unregister(l)
		l.s.lk.leave(l.key, l.slot, true)
	})
}

// giveBack deletes the key if it is still as the lease took it; if someone
// wrote to it since while the session still holds it, it deletes it all the
// same: the lease has the turn, so no other lease of the Locker has the key.
func (l *Lease) giveBack(ctx context.Context) error {
	deleted, err := deleteIfUnchanged(ctx, l.s.lk.conn, l.key, l.token)
	if err != nil || deleted {
		return err
	}
	return deleteIfHeld(ctx, l.s.lk.conn, l.key, l.s.id)
}
