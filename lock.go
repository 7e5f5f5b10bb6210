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
// before Consul could give the key to anyone else. With Config.Renew the session is renewed while the lock is
// held, and LockTimeout only bounds how long a holder that died keeps it.
//
// The methods are safe for concurrent use. Release from another goroutine
// cancels an Acquire in progress.
type EphemeralLock struct {
	cfg  Config
	key  string
	conn conn
	lost chan struct{} // closed when the hold ends; see Lost

	mu        sync.Mutex
	state     lockState
	cancel    context.CancelFunc // cancels an Acquire in progress
	acquired  chan struct{}      // closed when an Acquire in progress returns
	holder    *api.KVPair        // who kept the key through a failed acquire
	hold      hold               // the current hold, while held
	lostErr   error              // why the hold was lost, if it was
	stopWatch context.CancelFunc // ends the goroutine that watches the hold
	stopRenew context.CancelFunc // ends the goroutine that renews the hold
	expiry    *time.Timer        // fires at the hold's local deadline
	onLost    context.CancelCauseFunc
	releasing chan struct{} // while a Release gives the key back; closed when it is done
}

type lockState int

const (
	stateNew lockState = iota
	stateAcquiring
	stateHeld
	stateDone // released, or an acquire that failed: single use either way
)

// hold is one acquisition of a lock.
type hold struct {
	session  string
	token    uint64
	expires  time.Time // the local deadline: Consul may free the key from then on
	acquired time.Time // when the acquire returned
	attempts int       // writes that tried to take the key
}

// NewEphemeralLock builds a lock on the key that Defaults.KeyPattern (or
// WithKeyPattern) makes of name. It validates every setting and talks to no
// one: a bad name or option is reported here, with nothing written to Consul.
func NewEphemeralLock(name string, opts ...Option) (*EphemeralLock, error) {
	cfg, key, err := newKeyConfig(name, opts)
	if err != nil {
		return nil, err
	}
	return &EphemeralLock{cfg: cfg, key: key, conn: conn{cfg.Client, cfg.Token}, lost: make(chan struct{})}, nil
}

// Key returns the Consul key of the lock.
func (l *EphemeralLock) Key() string { return l.key }

// Session returns the ID of the Consul session of the hold, from Acquire
// until Release, and "" otherwise.
func (l *EphemeralLock) Session() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hold.session
}

// Token returns the fencing token of the hold, from Acquire until Release
// (also after a loss), and 0 otherwise: the Consul index of the write that
// took the key. Tokens of successive holders of one key strictly increase,
// also across deletions of the key, because Consul's index only grows. A
// resource that remembers the highest token it has seen and refuses smaller
// ones is safe from a holder that lost the lock without noticing.
func (l *EphemeralLock) Token() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hold.token
}

// Acquire takes the lock, waiting up to the acquire timeout for another
// holder to release it. It fails hard: when the lock stays taken for the whole
// timeout the error wraps ErrNotAcquired. Failures that pass (a Consul leader
// election, a dropped connection, an overloaded server) are retried with
// jittered backoff within the acquire timeout; if Consul still fails at the
// deadline, that failure is the error. A lock is single use: any call after
// the first returns ErrAlreadyUsed. When ctx ends first, Acquire returns
// promptly with ctx's error. Whenever it returns an error it has destroyed
// its session, retrying for up to 10 s; a session Consul cannot be told about
// then expires with its TTL.
func (l *EphemeralLock) Acquire(ctx context.Context) error {
	return l.acquire(ctx, nil)
}

// TryAcquire is Acquire without failing hard, python-consul-lock's
// fail_hard=False: it returns (false, nil) when another holder kept the lock
// for the whole acquire timeout, and an error only for a real failure.
func (l *EphemeralLock) TryAcquire(ctx context.Context) (bool, error) {
	return l.tryAcquire(ctx, nil)
}

func (l *EphemeralLock) acquire(ctx context.Context, onLost context.CancelCauseFunc) error {
	acquired, err := l.tryAcquire(ctx, onLost)
	if err == nil && !acquired {
		err = l.notAcquired()
	}
	return err
}

// tryAcquire acquires, and makes the end of the hold call onLost, if set.
func (l *EphemeralLock) tryAcquire(ctx context.Context, onLost context.CancelCauseFunc) (bool, error) {
	start := time.Now()
	ctx, err := l.begin(ctx, onLost)
	if err != nil {
		return false, err
	}
	h, err := l.contend(ctx)
	h.acquired = time.Now()
	if h.token != 0 && ctx.Err() != nil {
		// Cancelled, by the caller or by Release, just as the key was won:
		// give it back rather than report a lock Release took for not held.
		rctx, cancel := detached(ctx)
		l.giveBack(rctx, h.session, h.token)
		cancel()
		h.token, err = 0, context.Cause(ctx)
	}
	l.end(ctx, h)
	if err != nil {
		err = fmt.Errorf("consullock: acquire %q: %w", l.key, err)
	}
	if o := l.cfg.Observer; o != nil {
		e := AcquireEvent{Key: l.key, Token: h.token, Wait: time.Since(start), Attempts: h.attempts, Err: err}
		if err == nil && h.token == 0 {
			e.Err = l.notAcquired()
		}
		o.Acquired(e)
	}
	return h.token != 0, err
}

// Release gives the lock back: it stops renewing the session, deletes the
// key only if this lock's session still holds it, and destroys the session.
// It completes even when ctx is already cancelled, trying for up to 10 s, so
// that a deferred Release with a request's context still gives the lock back.
// It is idempotent, and does nothing on a lock never acquired; on a lock
// being acquired, it cancels the Acquire and waits for it (or for ctx). A
// failed Release may be retried; if it is not, Consul frees the key when the
// session's TTL runs out.
func (l *EphemeralLock) Release(ctx context.Context) error {
	var released *ReleaseEvent // told to the Observer once l.mu is unlocked
	defer func() {
		if released != nil {
			l.cfg.Observer.Released(*released)
		}
	}()
	l.mu.Lock()
	if l.state == stateAcquiring {
		l.cancel()
		done := l.acquired
		l.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("consullock: release %q during its acquire: %w", l.key, context.Cause(ctx))
		}
		l.mu.Lock()
	}
	for l.releasing != nil { // another Release is giving the key back: its outcome is ours
		done := l.releasing
		l.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("consullock: release %q: %w", l.key, context.Cause(ctx))
		}
		l.mu.Lock()
	}
	defer l.mu.Unlock()
	if l.state != stateHeld {
		l.state = stateDone
		l.endHold(true)
		return nil
	}
	l.stopRenew()
	h := l.hold
	err := l.giveBackUnlocked(ctx, h)
	if l.cfg.Observer != nil {
		released = &ReleaseEvent{Key: l.key, Token: h.token, Held: time.Since(h.acquired), Err: err}
	}
	if err != nil {
		l.endHold(true)
		return fmt.Errorf("consullock: release %q: %w", l.key, err)
	}
	// The watch sees the key deleted and ends by itself: cancelling its
	// blocking query would cost its connection.
	l.endHold(false)
	l.state, l.hold = stateDone, hold{}
	return nil
}

// giveBackUnlocked gives h back with l.mu unlocked, so that Err, Token and
// the watches are not held up for as long as Consul takes to answer; a
// loss found meanwhile is not reported (see loseLocked): the lock is being
// given up. l.mu is held on entry and on return.
func (l *EphemeralLock) giveBackUnlocked(ctx context.Context, h hold) error {
	l.releasing = make(chan struct{})
	l.mu.Unlock()
	rctx, cancel := detached(ctx)
	err := l.giveBack(rctx, h.session, h.token)
	cancel()
	l.mu.Lock()
	close(l.releasing)
	l.releasing = nil
	return err
}

// Hold acquires the lock, runs fn, and releases the lock however fn ends,
// also when it panics. It returns fn's error, joined with Release's if that
// failed; when the lock is not acquired, fn does not run and the error is
// Acquire's. The release runs even when ctx was cancelled.
//
// fn's context is cancelled when the lock is lost (see Lost), with a cause
// that wraps ErrLockLost: fn must stop touching what the lock protects then.
// It is also cancelled when another goroutine calls Release.
func (l *EphemeralLock) Hold(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if err := l.acquire(ctx, cancel); err != nil {
		return err
	}
	defer func() {
		if rerr := l.Release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(ctx)
}

// begin moves a new lock to acquiring and returns the context that Release
// cancels.
func (l *EphemeralLock) begin(ctx context.Context, onLost context.CancelCauseFunc) (context.Context, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateNew {
		return nil, fmt.Errorf("%w: %q", ErrAlreadyUsed, l.key)
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.state, l.acquired, l.onLost = stateAcquiring, make(chan struct{}), onLost
	return ctx, nil
}

// end records the outcome of an acquire and starts watching a hold.
func (l *EphemeralLock) end(ctx context.Context, h hold) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cancel()
	close(l.acquired)
	if h.token == 0 {
		l.state = stateDone
		l.endHold(true)
		return
	}
	l.state, l.hold = stateHeld, h
	l.startWatch(ctx, h)
}

// contend creates the lock's session and takes the key with it, waiting on
// blocking queries while another session holds it, and renewing the session
// while it waits so that the lock, once taken, has at least half its
// LockTimeout ahead. It returns the hold, whose token is 0 when the lock was
// not acquired; then it has destroyed the session again.
func (l *EphemeralLock) contend(ctx context.Context) (h hold, err error) {
	deadline := deadlineAfter(l.cfg.AcquireTimeout)
	if err := l.newSession(ctx, &h, deadline); err != nil {
		return hold{}, err
	}
	defer func() {
		if h.token == 0 {
			cctx, cancel := detached(ctx)
			defer cancel()
			err = errors.Join(err, destroySession(cctx, l.conn, h.session))
		}
	}()
	w := &keyWatch{conn: l.conn, key: l.key, deadline: deadline, maxWait: l.cfg.LockTimeout / 2,
		beforeQuery: func(ctx context.Context) error { return l.freshen(ctx, &h, deadline) },
		onHolder:    contended(l.cfg.Observer, l.key)}
	for {
		h.attempts++
		// A take that may have applied although it failed needs no care
		// here, nor one abandoned when ctx ended: destroying the session
		// deletes the key, and a take applied after that fails.
		if h.token, _, err = takeKey(ctx, l.conn, l.key, l.cfg.Value(), h.session, deadline, nil); h.token != 0 || err != nil {
			return h, err
		}
		switch err = w.untilFree(ctx); {
		case errors.Is(err, errDeadline):
			l.recordHolder(w.holder)
			return h, nil
		case err != nil:
			return h, err
		}
	}
}

func (l *EphemeralLock) newSession(ctx context.Context, h *hold, deadline time.Time) error {
	id, sent, err := createSession(ctx, l.conn, sessionSpec{l.key, l.cfg.LockTimeout, l.cfg.LockDelay}, deadline)
	if err != nil {
		return err
	}
	h.session, h.expires = id, holdExpiry(sent, l.cfg.LockTimeout)
	return nil
}

// freshen renews a waiting lock's session once half its TTL has passed, and
// replaces it if Consul no longer knows it.
func (l *EphemeralLock) freshen(ctx context.Context, h *hold, deadline time.Time) error {
	ttl := l.cfg.LockTimeout
	if time.Until(h.expires) > ttl/2 {
		return nil
	}
	sent := time.Now()
	switch err := renewSession(ctx, l.conn, h.session, deadline, l.cfg.Observer); {
	case err == errSessionGone:
		return l.newSession(ctx, h, deadline)
	case err != nil:
		return err
	}
	h.expires = holdExpiry(sent, ttl)
	return nil
}

// giveBack releases the key and destroys the session. With a lock delay, the
// key is deleted first, conditional on this session holding it, because
// destroying a session that still holds a key imposes the lock delay on the
// next holder. Without one, destroying the session deletes the key in the same
// consensus write.
func (l *EphemeralLock) giveBack(ctx context.Context, session string, token uint64) error {
	if l.cfg.LockDelay > 0 {
		if err := releaseKey(ctx, l.conn, l.key, session, token); err != nil {
			return err
		}
	}
	return destroySession(ctx, l.conn, session)
}

// recordHolder notes who kept the key, for ErrNotAcquired's message.
func (l *EphemeralLock) recordHolder(pair *api.KVPair) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holder = pair
}

func (l *EphemeralLock) notAcquired() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return notAcquiredError(l.key, l.holder, l.cfg.AcquireTimeout)
}

// notAcquiredError says who kept key, when it is known.
func notAcquiredError(key string, holder *api.KVPair, timeout time.Duration) error {
	if holder == nil {
		return fmt.Errorf("%w: %q held by another session", ErrNotAcquired, key)
	}
	who := "session " + holder.Session
	// Name the holder from a value in the default format only: a value of
	// another shape may hold anything, and errors end up in logs.
	if h, err := ParseHolder(holder.Value); err == nil && (h.Host != "" || h.PID != 0) {
		who += fmt.Sprintf(" (host %.100q, pid %d, since %.40q)", h.Host, h.PID, h.LockedAt)
	}
	return fmt.Errorf("%w: %q held by %s for the whole acquire timeout (%v)", ErrNotAcquired, key, who, timeout)
}

// contended returns the keyWatch hook that tells o of a holder, or nil.
func contended(o Observer, key string) func(string) {
	if o == nil {
		return nil
	}
	return func(holder string) { o.Contended(ContendEvent{Key: key, Holder: holder}) }
}

// deadlineAfter is time.Now().Add(d) without overflow for huge timeouts.
func deadlineAfter(d time.Duration) time.Time {
	const century = 100 * 365 * 24 * time.Hour
	return time.Now().Add(min(d, century))
}
