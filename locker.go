package consullock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Locker takes locks for one process through a single Consul session that
// all its locks share and that it renews in the background, so that a lock
// cycle costs two consensus writes: one to take the key (which also returns
// the fencing token) and one to give it back. An EphemeralLock, with a
// session of its own, costs three.
//
// Goroutines of one Locker that want the same key queue for it locally, in
// arrival order, and only the first of them contends in Consul: waiters cost
// Consul nothing, and a released key goes to the next local waiter at once,
// for one write (see turn.go); after 64 such handoffs in a row the key is
// given back in Consul, so that other processes get their turn.
//
// Each lock's maximum lifespan (Config.LockTimeout) is enforced by the
// Locker, which gives the key back when it passes (WithRenewal lifts it);
// the session's TTL (WithSessionTTL) is the backstop that frees every key
// of a process that died or was cut off from Consul. If the session is
// lost, every lock taken through it is lost, and the next Acquire creates a
// new session.
//
// A Locker is safe for concurrent use. Close it to give back its locks.
type Locker struct {
	s    settings
	conn conn

	create chan struct{} // holds a token while a session is being created

	mu       sync.Mutex
	sess     *session              // the session new locks are taken with; nil before the first
	sessions map[*session]struct{} // every session not yet known to be gone, for Close
	slots    map[string]*keySlot
	closed   bool
}

const lockerSessionName = "locker"

// NewLocker builds a Locker. It validates every setting and talks to no one;
// the session is created by the first Acquire.
func NewLocker(opts ...Option) (*Locker, error) {
	s, err := newSettings(forLocker, opts)
	if err != nil {
		return nil, wrapOp("NewLocker", "", err)
	}
	return &Locker{s: s, conn: s.conn(), create: make(chan struct{}, 1),
		sessions: map[*session]struct{}{}, slots: map[string]*keySlot{}}, nil
}

// Acquire takes the lock on the key that the Locker's KeyPattern makes of
// name, waiting up to the acquire timeout. When another holder keeps it for
// the whole timeout the error wraps ErrNotAcquired; passing failures are
// retried within the timeout; when ctx ends first, Acquire returns promptly
// with ctx's error. It returns within the acquire timeout plus about a round
// trip. Whenever it returns an error, it holds nothing.
func (lk *Locker) Acquire(ctx context.Context, name string) (*Lease, error) {
	key, err := lk.s.keyOf(name)
	if err != nil {
		return nil, wrapOp("acquire", name, err)
	}
	if l := lk.reenter(ctx, key); l != nil {
		return l, nil
	}
	start := time.Now()
	a := lk.attempt([]string{key})
	queueFor(a)
	leases, err := lk.acquire(ctx, a)
	observeAcquired(lk.s.Observer, a.keys, start, a.attempts, leases, err)
	if err != nil {
		return nil, err
	}
	return leases[0], nil
}

// acquire takes the local turns of a's keys in sorted order (so that
// goroutines that want the same keys never deadlock), then the keys.
func (lk *Locker) acquire(ctx context.Context, a *attempt) ([]*Lease, error) {
	slots := make([]*keySlot, len(a.keys))
	leaveAll := func() {
		a.fail()
		leave := func() {
			for i, slot := range slots {
				if slot != nil {
					lk.leave(a.keys[i], slot, true)
				}
			}
		}
		if a.pending == nil {
			leave()
			return
		}
		lk.undoing(slots, true)
		go func() { // the turns go with the take in doubt
			a.pending()
			lk.undoing(slots, false)
			leave()
		}()
	}
	for _, i := range sortedOrder(a.keys) {
		slot, err := lk.takeTurn(ctx, a.keys[i], a.deadline)
		if err != nil {
			leaveAll()
			return nil, wrapOp("acquire", keysName(a.keys), err)
		}
		slots[i] = slot
	}
	if len(a.keys) == 1 {
		if d := lk.yieldFor(slots[0]); d > 0 {
			if err := sleep(ctx, d); err != nil {
				leaveAll()
				return nil, wrapOp("acquire", a.keys[0], err)
			}
		}
	}
	for {
		s, tokens, err := a.contend(ctx)
		if err != nil {
			leaveAll()
			return nil, wrapOp("acquire", keysName(a.keys), err)
		}
		if leases := lk.register(s, a, slots, tokens); leases != nil {
			a.settled()
			return leases, nil
		}
		// The session ended as the keys were taken, which frees them: take
		// them again with the next one.
	}
}

// attempt is an acquire of keys with the Locker's session, until the
// acquire timeout.
func (lk *Locker) attempt(keys []string) *attempt {
	deadline := deadlineAfter(lk.s.AcquireTimeout)
	return &attempt{conn: lk.conn, keys: keys, value: lk.s.Value, flags: lk.s.keyFlags(), deadline: deadline,
		timeout: lk.s.AcquireTimeout, obs: lk.s.Observer,
		session: func(ctx context.Context) (*session, error) { return lk.session(ctx, deadline) },
		current: lk.currentSession,
		undo:    lk.undoTake,
	}
}

// register makes leases of keys just taken together with s, all or none:
// none when s ended meanwhile.
func (lk *Locker) register(s *session, a *attempt, slots []*keySlot, tokens []uint64) []*Lease {
	var lifespan time.Time
	if !lk.s.renew {
		lifespan = a.sent.Add(lk.s.LockTimeout)
	}
	leases := make([]*Lease, len(a.keys))
	hs := make([]*held, len(a.keys))
	for i, key := range a.keys {
		lk.took(slots[i])
		leases[i] = &Lease{lk: lk, slot: slots[i]}
		hs[i] = newHeld(lk.conn, key, tokens[i], s, leases[i], lk.s.Observer, lk.s.LockTimeout, lifespan, nil)
		hs[i].eager, hs[i].queue = a.eager, a.queue
		leases[i].h = hs[i]
	}
	if !s.register(hs...) {
		return nil
	}
	for _, h := range hs {
		h.start()
	}
	return leases
}

// Hold acquires the lock on name, runs fn, and releases the lock however fn
// ends, also when it panics. fn's context is cancelled with a cause wrapping
// ErrLockLost if the lock is lost, and carries the lease (see
// ContextWithLease). It returns fn's error, joined with Release's if that
// failed.
func (lk *Locker) Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	lease, err := lk.Acquire(ctx, name)
	if err != nil {
		return err
	}
	carry := func(ctx context.Context) context.Context { return ContextWithLease(ctx, lease) }
	return hold(ctx, lease.h, lease.Release, carry, fn)
}

// Close gives back every lock of the Locker at once, by destroying its
// sessions, and stops renewing them. Leases still held end as lost. Acquire
// fails with ErrClosed after Close. It returns an error wrapping ErrConsul
// that names each session Consul could not be told to destroy: its keys are
// freed when its TTL runs out.
func (lk *Locker) Close(ctx context.Context) error {
	lk.mu.Lock()
	lk.closed = true
	lk.sess = nil
	sessions := lk.sessions
	lk.sessions = map[*session]struct{}{}
	lk.mu.Unlock()
	var errs []error
	for s := range sessions {
		if err := s.destroy(ctx, fmt.Errorf("%w: the Locker was closed", ErrLockLost)); err != nil {
			errs = append(errs, fmt.Errorf("%w; its keys are freed when its TTL (%v) runs out", err, lk.s.lockerTTL()))
		}
	}
	return wrapOp("close", "", errors.Join(errs...))
}

// session returns the Locker's live session, creating it when there is
// none, before deadline.
func (lk *Locker) session(ctx context.Context, deadline time.Time) (*session, error) {
	if err := lk.createTurn(ctx, deadline); err != nil {
		return nil, err
	}
	defer func() { <-lk.create }()
	lk.mu.Lock()
	s, closed := lk.sess, lk.closed
	lk.mu.Unlock()
	switch {
	case closed:
		return nil, ErrClosed
	case s != nil && s.Err() == nil:
		return s, nil
	}
	s, err := startSession(ctx, lk.conn, sessionSpec{name: lockerSessionName, ttl: lk.s.lockerTTL(), lockDelay: lk.s.LockDelay, obs: lk.s.Observer}, deadline)
	if err != nil {
		return nil, err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed { // closed while it was created
		s.abandon(fmt.Errorf("%w: the Locker was closed", ErrLockLost))
		return nil, ErrClosed
	}
	for old := range lk.sessions {
		select {
		case <-old.gone:
			delete(lk.sessions, old)
		default:
		}
	}
	lk.sess = s
	lk.sessions[s] = struct{}{}
	return s, nil
}

// currentSession returns the session new locks are taken with, or nil.
func (lk *Locker) currentSession() *session {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	return lk.sess
}

// createTurn waits for the turn to create the Locker's session: one
// creation at a time. A creation in flight is bounded by its own acquire's
// deadline, and is given about a round trip more than this one's.
func (lk *Locker) createTurn(ctx context.Context, deadline time.Time) error {
	select {
	case lk.create <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(time.Until(deadline) + time.Second)
	defer t.Stop()
	select {
	case lk.create <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return fmt.Errorf("%w: no session by the acquire deadline: another acquire is still creating the Locker's session", ErrConsul)
	}
}

// undoTake gives back keys that a take with s may have got although it
// failed or was abandoned. It runs with the keys' local turns held, so a key
// that s holds is no lease's: a late take cannot have landed on a later
// holder's. A key that cannot be given back ends the session, whose
// destruction frees it.
func (lk *Locker) undoTake(s *session, keys []string) {
	if err := giveBackTaken(lk.conn, s, keys); err != nil {
		s.abandon(fmt.Errorf("%w: %w", ErrLockLost, err))
	}
}

// keysName names a set of keys in messages.
func keysName(keys []string) string {
	if len(keys) == 1 {
		return keys[0]
	}
	return fmt.Sprint(keys)
}
