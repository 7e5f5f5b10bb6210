package consullock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
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
// Locker, which gives the key back when it passes; the session's TTL
// (Config.SessionTTL) is the backstop that frees every key of a process that
// died or was cut off from Consul. If the session is lost, every lock taken
// through it is lost, and the next Acquire creates a new session.
//
// A Locker is safe for concurrent use. Close it to give back its locks.
type Locker struct {
	cfg  Config
	conn conn

	create chan struct{} // holds a token while a session is being created

	mu     sync.Mutex
	sess   *sharedSession // nil before the first lock and after a loss
	slots  map[string]*keySlot
	closed bool
}

var errLockerClosed = errors.New("the Locker is closed")

// NewLocker builds a Locker. It validates every setting and talks to no one;
// the session is created by the first Acquire.
func NewLocker(opts ...Option) (*Locker, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Locker{cfg: cfg, conn: conn{cfg.Client, cfg.Token}, create: make(chan struct{}, 1), slots: map[string]*keySlot{}}, nil
}

// Acquire takes the lock on the key that the Locker's KeyPattern makes of
// name, waiting up to the acquire timeout. When another holder keeps it for
// the whole timeout the error wraps ErrNotAcquired; passing failures are
// retried within the timeout; when ctx ends first, Acquire returns promptly
// with ctx's error. Whenever it returns an error, it holds nothing.
func (lk *Locker) Acquire(ctx context.Context, name string) (*Lease, error) {
	key, err := lockKey(lk.cfg.KeyPattern, name)
	if err != nil {
		return nil, err
	}
	if l := lk.reenter(ctx, key); l != nil {
		return l, nil
	}
	start, attempts := time.Now(), 0
	lease, err := lk.acquire(ctx, key, &attempts)
	observeAcquired(lk.cfg.Observer, []string{key}, start, attempts, []*Lease{lease}, err)
	return lease, err
}

func (lk *Locker) acquire(ctx context.Context, key string, attempts *int) (*Lease, error) {
	deadline := deadlineAfter(lk.cfg.AcquireTimeout)
	slot, err := lk.takeTurn(ctx, key, deadline)
	if err != nil {
		return nil, err
	}
	if d := lk.yieldFor(slot); d > 0 {
		if err := sleep(ctx, d); err != nil {
			lk.leave(key, slot, true)
			return nil, err
		}
	}
	lease, err := lk.contend(ctx, key, slot, deadline, attempts)
	if err != nil {
		lk.leave(key, slot, true)
		return nil, fmt.Errorf("consullock: acquire %q: %w", key, err)
	}
	return lease, nil
}

// Hold acquires the lock on name, runs fn, and releases the lock however fn
// ends, also when it panics. fn's context is cancelled with a cause wrapping
// ErrLockLost if the lock is lost. It returns fn's error, joined with
// Release's if that failed.
func (lk *Locker) Hold(ctx context.Context, name string, fn func(ctx context.Context) error) (err error) {
	lease, err := lk.Acquire(ctx, name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer lease.notify(cancel)()
	ctx = ContextWithLease(ctx, lease)
	defer func() {
		rctx, rcancel := detached(ctx)
		defer rcancel()
		if rerr := lease.Release(rctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(ctx)
}

// Close gives back every lock of the Locker at once, by destroying its
// session, and stops renewing it. Leases still held end as lost. Acquire
// fails after Close.
func (lk *Locker) Close(ctx context.Context) error {
	lk.mu.Lock()
	lk.closed = true
	s := lk.sess
	lk.sess = nil
	lk.mu.Unlock()
	if s == nil {
		return nil
	}
	s.end(fmt.Errorf("%w: the Locker was closed", ErrLockLost))
	<-s.renewed
	if err := destroySession(ctx, lk.conn, s.id); err != nil {
		return fmt.Errorf("consullock: close: %w", err)
	}
	return nil
}

// contend takes key with the Locker's session, waiting on blocking queries
// while another session holds it. A session that ends meanwhile is replaced.
// The caller has the turn on key, so a key that the session holds is this
// goroutine's to take or to give back.
func (lk *Locker) contend(ctx context.Context, key string, slot *keySlot, deadline time.Time, attempts *int) (*Lease, error) {
	w := &keyWatch{conn: lk.conn, key: key, deadline: deadline, onHolder: contended(lk.cfg.Observer, key)}
	var contender, queuedBy string // the contender key, and the session that holds it
	for {
		s, err := lk.session(ctx, deadline)
		if err != nil {
			return nil, err
		}
		var leave []*api.KVTxnOp // the write that takes the lock also leaves the queue
		if lk.cfg.Fair {
			if queuedBy != s.id {
				var waited bool
				contender, waited, err = lk.enqueue(ctx, key, s.id, deadline)
				queuedBy = s.id
				if err == nil && waited {
					err = w.untilFree(ctx) // the predecessor has just taken it: no write in vain
				}
				if err != nil {
					lk.dequeue(ctx, contender, queuedBy)
					if errors.Is(err, errDeadline) {
						return nil, notAcquiredError(key, w.holder, lk.cfg.AcquireTimeout)
					}
					return nil, err
				}
			}
			leave = append(leave, leaveQueue(contender))
		}
		acquiredAt := time.Now()
		*attempts++
		token, maybeTaken, err := takeKey(ctx, lk.conn, key, lk.cfg.Value(), s.id, deadline, lk.giveBackAbandoned(key), leave...)
		switch {
		case err != nil && strings.Contains(err.Error(), "nvalid session"):
			s.end(fmt.Errorf("%w: Consul no longer knows the Locker's session", ErrLockLost))
			continue
		case err != nil:
			if maybeTaken { // do not leave the key to a session that lives on
				cctx, cancel := detached(ctx)
				deleteIfHeld(cctx, lk.conn, key, s.id)
				cancel()
			}
			if contender != "" {
				lk.dequeue(ctx, contender, queuedBy)
			}
			return nil, err
		case token != 0:
			lk.took(slot)
			if l := s.register(key, slot, token, acquiredAt); l != nil {
				return l, nil
			}
			continue // the session ended just now: take the key with the next
		}
		err = w.untilFree(ctx)
		if err != nil && contender != "" {
			lk.dequeue(ctx, contender, queuedBy)
		}
		switch {
		case errors.Is(err, errDeadline):
			return nil, notAcquiredError(key, w.holder, lk.cfg.AcquireTimeout)
		case err != nil:
			return nil, err
		}
	}
}

// session returns the Locker's live session, creating it when there is none.
func (lk *Locker) session(ctx context.Context, deadline time.Time) (*sharedSession, error) {
	select { // one creation at a time, abandoned when ctx ends
	case lk.create <- struct{}{}:
		defer func() { <-lk.create }()
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	lk.mu.Lock()
	s, closed := lk.sess, lk.closed
	lk.mu.Unlock()
	switch {
	case closed:
		return nil, errLockerClosed
	case s != nil:
		return s, nil
	}
	ttl := lk.cfg.sessionTTL()
	id, sent, err := createSession(ctx, lk.conn, sessionSpec{"locker", ttl, lk.cfg.LockDelay}, deadline)
	if err != nil {
		return nil, err
	}
	s = startSharedSession(lk, id, holdExpiry(sent, ttl))
	lk.mu.Lock()
	installed := !lk.closed && s.lostErr == nil
	if installed {
		lk.sess = s
	}
	lk.mu.Unlock()
	if !installed { // closed, or expired, while it was created
		s.end(errLockerClosed)
		cctx, cancel := detached(ctx)
		defer cancel()
		destroySession(cctx, lk.conn, id)
		return nil, errLockerClosed
	}
	return s, nil
}
