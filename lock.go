package consullock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// EphemeralLock is a single-use lock on one Consul key, for short critical
// sections such as application hot spots: the lock python-consul-lock
// offers, with the same key layout and value, so Go and Python holders of
// one key exclude each other.
//
// Each lock has a Consul session of its own whose invalidation deletes the
// key. While the lock is held, no other session can hold its key. By default
// the session's TTL is the lock's maximum lifespan (Config.LockTimeout): the
// guarantee lasts until Release, or until Consul invalidates the session once
// LockTimeout has passed since it was created or last renewed (at any time
// up to about twice that), whichever comes first, and Lost tells the holder
// before Consul could give the key to anyone else. With WithRenewal the
// session is renewed while the lock is held, and LockTimeout only bounds how
// long a holder that died keeps it.
//
// The methods are safe for concurrent use. Release from another goroutine
// cancels an Acquire in progress.
type EphemeralLock struct {
	s    settings
	key  string
	conn conn
	lost chan struct{} // closed when the lock is no longer held; see Lost

	mu       sync.Mutex
	state    lockState
	cancel   context.CancelFunc // cancels an Acquire in progress
	acquired chan struct{}      // closed when an Acquire in progress returns
	h        *held              // the hold, once acquired
	undone   sync.WaitGroup     // session creates abandoned, still being undone
}

type lockState int

const (
	stateNew lockState = iota
	stateAcquiring
	stateHeld // acquired: the hold says whether it is still held
	stateDone // released, or an acquire that failed: single use either way
)

// NewEphemeralLock builds a lock on the key that Defaults.KeyPattern (or
// WithKeyPattern) makes of name. It validates every setting and talks to no
// one: a bad name or option is reported here, with nothing written to Consul.
func NewEphemeralLock(name string, opts ...Option) (*EphemeralLock, error) {
	s, err := newSettings(forLock, opts)
	if err != nil {
		return nil, wrapOp("NewEphemeralLock", name, err)
	}
	key, err := s.keyOf(name)
	if err != nil {
		return nil, wrapOp("NewEphemeralLock", name, err)
	}
	return &EphemeralLock{s: s, key: key, conn: s.conn(), lost: make(chan struct{})}, nil
}

// Key returns the Consul key of the lock.
func (l *EphemeralLock) Key() string { return l.key }

// hold returns the hold from Acquire until Release, and nil otherwise.
func (l *EphemeralLock) hold() *held {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateHeld {
		return nil
	}
	return l.h
}

// Session returns the ID of the Consul session of the hold, from Acquire
// until Release, and "" otherwise.
func (l *EphemeralLock) Session() string {
	if h := l.hold(); h != nil {
		return h.sess.id
	}
	return ""
}

// Token returns the fencing token of the hold, from Acquire until Release
// (also after a loss), and 0 otherwise: the Consul index of the write that
// took the key. Tokens of successive holders of one key strictly increase,
// also across deletions of the key, because Consul's index only grows. A
// resource that remembers the highest token it has seen and refuses smaller
// ones is safe from a holder that lost the lock without noticing.
func (l *EphemeralLock) Token() uint64 {
	if h := l.hold(); h != nil {
		return h.token
	}
	return 0
}

// Lost returns a channel that is closed when the lock is no longer held:
// lost, released, or not acquired. A loss is noticed within about a round
// trip of Consul deleting the key, giving it to another session or writing
// to it, and at the latest at the local deadline: LockTimeout (less up to a
// second for clock rates) after the session was created or last renewed,
// before Consul could give the key to anyone else. Err tells a loss from a
// release. After a loss nothing renews the session any more, and it is
// destroyed.
func (l *EphemeralLock) Lost() <-chan struct{} { return l.lost }

// Err returns why the lock was lost, an error wrapping ErrLockLost, or nil
// when it was not lost (held, released, or never acquired). It checks the
// local deadline itself rather than trusting a timer: a holder that calls Err
// before each step of its work never takes a step after the deadline, even
// when a pause (a long GC, SIGSTOP, a frozen VM) delayed every goroutine.
func (l *EphemeralLock) Err() error {
	if h := l.hold(); h != nil {
		return h.Err()
	}
	return nil
}

// CheckOp returns a transaction operation that fails unless the lock still
// holds its key as it took it (the key's index is the lock's token): put it
// first in a Consul transaction (api.KV.Txn or api.Txn.Txn) and the rest of
// the transaction applies only while the lock is held, like etcd's
// Mutex.IsOwner. On a lock not held, the operation always fails.
func (l *EphemeralLock) CheckOp() *api.KVTxnOp {
	if h := l.hold(); h != nil {
		return h.CheckOp()
	}
	return &api.KVTxnOp{Verb: api.KVCheckIndex, Key: l.key, Index: 0} // no key has index 0
}

// PutFenced writes value under key in one consensus write that applies only
// if this lock still holds its key at that moment, so a holder that lost the
// lock without noticing cannot overwrite what its successor wrote. When the
// lock is not held, nothing is written and the error wraps ErrLockLost; when
// it was Consul that refused, the lock is lost from then on (Lost and Err
// say so), as the watch would have found a moment later.
//
// A resource outside Consul gets the same protection from Token: store the
// highest token seen with the data and refuse writes that carry a lower one.
func (l *EphemeralLock) PutFenced(ctx context.Context, key string, value []byte) error {
	if h := l.hold(); h != nil {
		return h.PutFenced(ctx, key, value)
	}
	if err := validateKey(key); err != nil {
		return wrapOp("fenced put", key, fmt.Errorf("%w: %s", ErrInvalidKey, err))
	}
	return wrapOp("fenced put", key, fmt.Errorf("%w: %q is not held", ErrLockLost, l.key))
}

// Acquire takes the lock, waiting up to the acquire timeout for another
// holder to release it. It fails hard: when the lock stays taken for the whole
// timeout the error wraps ErrNotAcquired. Failures that pass (a Consul leader
// election, a dropped connection, an overloaded server) are retried with
// jittered backoff within the acquire timeout; if Consul still fails at the
// deadline, the error wraps ErrConsul. A lock is single use: any call after
// the first returns ErrAlreadyUsed. When ctx ends first, Acquire returns
// promptly with ctx's error. It returns within the acquire timeout plus about
// a round trip. Whenever it returns an error it holds nothing: its session
// is destroyed (in the background if Consul is slow to answer; a session
// Consul cannot be told about expires with its TTL).
func (l *EphemeralLock) Acquire(ctx context.Context) error { return l.acquire(ctx) }

// TryAcquire is Acquire without failing hard, python-consul-lock's
// fail_hard=False: it returns (false, nil) when another holder kept the lock
// for the whole acquire timeout, and an error only for a real failure.
func (l *EphemeralLock) TryAcquire(ctx context.Context) (bool, error) {
	err := l.acquire(ctx)
	if errors.Is(err, ErrNotAcquired) {
		return false, nil
	}
	return err == nil, err
}

func (l *EphemeralLock) acquire(ctx context.Context) error {
	start := time.Now()
	ctx, err := l.begin(ctx)
	if err != nil {
		return wrapOp("acquire", l.key, err)
	}
	a := l.attempt()
	h, err := l.contend(ctx, a)
	l.end(h)
	err = wrapOp("acquire", l.key, err)
	if o := l.s.Observer; o != nil {
		e := AcquireEvent{Key: l.key, Wait: time.Since(start), Attempts: a.attempts, Err: err}
		if h != nil {
			e.Token = h.token
		}
		o.Acquired(e)
	}
	return err
}

// begin moves a new lock to acquiring and returns the context that Release
// cancels.
func (l *EphemeralLock) begin(ctx context.Context) (context.Context, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateNew {
		return nil, ErrAlreadyUsed
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.state, l.acquired = stateAcquiring, make(chan struct{})
	return ctx, nil
}

// end records the outcome of an acquire: the hold, or nil.
func (l *EphemeralLock) end(h *held) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cancel()
	close(l.acquired)
	if h == nil {
		l.state = stateDone
		close(l.lost)
		return
	}
	l.state, l.h = stateHeld, h
}

// attempt is the lock's acquire: its own session, made on first use and
// renewed while it waits, so that the lock, once taken, has at least half
// its LockTimeout ahead; and made anew if Consul forgets it.
func (l *EphemeralLock) attempt() *attempt {
	deadline := deadlineAfter(l.s.AcquireTimeout)
	a := &attempt{conn: l.conn, keys: []string{l.key}, value: l.s.Value, flags: l.s.keyFlags(), deadline: deadline,
		timeout: l.s.AcquireTimeout, obs: l.s.Observer}
	var sess *session
	a.session = func(ctx context.Context) (*session, error) {
		if sess != nil && sess.Err() == nil {
			return sess, nil
		}
		spec := sessionSpec{name: l.key, ttl: l.s.LockTimeout, lockDelay: l.s.LockDelay, obs: l.s.Observer, undone: &l.undone}
		s, err := startSession(ctx, l.conn, spec, deadline)
		if err == nil {
			sess = s
		}
		return s, err
	}
	// Destroying the session deletes whatever a take got with it. With a
	// lock delay, the key goes first: ending a session that holds it would
	// keep everyone from it for the delay.
	a.undo = func(s *session, keys []string) {
		if l.s.LockDelay > 0 {
			_ = giveBackTaken(l.conn, s, keys) // else the session's end frees it
		}
		s.abandon(errAbandoned)
	}
	queueFor(a)
	return a
}

// errAbandoned ends the session of an acquire that failed.
var errAbandoned = fmt.Errorf("%w: the acquire failed", ErrLockLost)

// contend takes the key with the lock's session, and returns its hold. A
// session that fails the acquire is destroyed: within the acquire's bounds
// when Consul answers in time, else in the background.
func (l *EphemeralLock) contend(ctx context.Context, a *attempt) (*held, error) {
	for {
		s, tokens, err := a.contend(ctx)
		if err == nil && ctx.Err() != nil {
			// Cancelled, by the caller or by Release, just as the key was
			// won: give it back rather than report a lock not held.
			err = context.Cause(ctx)
		}
		if err != nil {
			if a.q.me != "" && l.s.LockDelay > 0 {
				// A handoff that came as the acquire failed must not be
				// ended with the session: that would impose the delay.
				a.q.leave()
			}
			a.settled()
			l.endFailed(a, tokens != nil)
			l.waitUndone(ctx, a.last)
			return nil, err
		}
		if !l.s.renew {
			s.stopRenewing()
		}
		h := newHeld(l.conn, l.key, tokens[0], s, l, l.s.Observer, l.s.LockTimeout, time.Time{}, l.lost)
		h.eager, h.queue = a.eager, a.queue
		if s.register(h) {
			h.start()
			a.settled()
			return h, nil
		}
		// The session reached its local deadline as the key was taken:
		// destroying it gives the key back; take it with a new one.
		a.undo(s, a.keys)
	}
}

// endFailed ends the session of a failed acquire, which frees what it
// holds. With a lock delay, what it may hold is given back first, since
// ending a session that holds the key imposes the delay on everyone: the
// key won as the acquire was cancelled, and the key of a take still in
// flight, once its fate is known (in the background: waitUndone waits a
// second for it, and the take's undo gives the key back if it landed).
func (l *EphemeralLock) endFailed(a *attempt, won bool) {
	s := a.last
	switch {
	case s == nil:
	case l.s.LockDelay > 0 && won:
		a.undo(s, a.keys)
	case l.s.LockDelay > 0 && a.pending != nil:
		pending := a.pending
		l.undone.Add(1)
		go func() {
			defer l.undone.Done()
			pending()
			a.undo(s, nil)
		}()
	default:
		a.undo(s, nil)
	}
}

// waitUndone waits, for a second at most, even after ctx ended, until the
// session s of a failed acquire (if any) and any session whose create was
// abandoned are destroyed, and a take in flight is given back: usually a
// round trip, worth waiting for so that a failed Acquire leaves nothing
// behind.
func (l *EphemeralLock) waitUndone(ctx context.Context, s *session) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.undone.Wait()
		if s != nil {
			<-s.gone
		}
	}()
	waitBounded(context.WithoutCancel(ctx), done, time.Now().Add(time.Second))
}

// release gives the key back for Release: one write that destroys the
// session, which deletes the key with it. When a waiter is in line, the key
// is handed to it first (see queue.go); with a lock delay it is deleted
// first, because destroying a session that holds a key imposes the lock
// delay on the next holder.
func (l *EphemeralLock) release(ctx context.Context, h *held) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	handed, err := handOver(ctx, l.conn, h.key, h.sess.id, h.token, h.queue, h.eager)
	if err != nil {
		return err
	}
	if !handed && l.s.LockDelay > 0 {
		if err := giveBackKey(ctx, l.conn, h.key, h.sess.id, h.token); err != nil {
			return err
		}
	}
	if err := destroySession(ahead(ctx), l.conn, h.sess.id); err != nil { // the key may go with it
		return err
	}
	if !handed {
		noteReleased(l.conn, h.key, h.sess.id) // the key went with the session
	}
	h.sess.invalidate(ErrReleased)
	return nil
}

// finish destroys the session of a hold that ended, if it lives on.
func (l *EphemeralLock) finish(h *held, _ bool) {
	// A session that reached its local deadline is left to Consul: the
	// holder was promised the key until then. Any other is destroyed.
	if h.sess.end(errAbandoned) {
		h.sess.abandon(errAbandoned)
		<-h.sess.gone // bounded by cleanupTimeout
	}
}

// Release gives the lock back: it stops renewing the session, deletes the
// key only if this lock still holds it, and destroys the session. It
// completes even when ctx is already cancelled, trying for up to 10 s, so
// that a deferred Release with a request's context still gives the lock
// back. It is idempotent, and does nothing on a lock never acquired; on a
// lock lost it destroys the session if Consul may still have it, waiting
// for that until ctx ends (it goes on in the background); on a lock being
// acquired, it cancels the Acquire and waits for it. A second Release while
// one is in flight returns the first one's outcome. A failed Release may be
// retried; if it is not, Consul frees the key when the session's TTL runs
// out.
func (l *EphemeralLock) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.state == stateAcquiring {
		l.cancel()
		done := l.acquired
		l.mu.Unlock()
		<-done // an Acquire returns promptly once cancelled
		l.mu.Lock()
	}
	h := l.h
	if l.state == stateNew {
		l.state = stateDone
		close(l.lost)
	}
	l.mu.Unlock()
	if h == nil {
		return nil
	}
	if h.Err() != nil { // lost: its session, if Consul may still have it, goes now
		h.sess.abandon(errAbandoned)
		h.Release(ctx)
		select {
		case <-h.sess.gone:
		case <-ctx.Done():
		}
	} else if err := h.Release(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	l.state = stateDone
	l.mu.Unlock()
	return nil
}

// Hold acquires the lock, runs fn, and releases the lock however fn ends,
// also when it panics. It returns fn's error, joined with Release's if that
// failed; when the lock is not acquired, fn does not run and the error is
// Acquire's. The release runs even when ctx was cancelled.
//
// fn's context is cancelled when the lock is lost (see Lost), with a cause
// that wraps ErrLockLost: fn must stop touching what the lock protects then.
// It is also cancelled, with cause ErrReleased, when another goroutine calls
// Release.
func (l *EphemeralLock) Hold(ctx context.Context, fn func(ctx context.Context) error) error {
	if err := l.Acquire(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	h := l.h
	l.mu.Unlock()
	return hold(ctx, h, l.Release, nil, fn)
}
