package consullock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// attempt is one acquire of a set of keys, by any lock type: take them with
// a live session, and, while one is held elsewhere, wait for it and take
// again, until the deadline. It is the one place that decides what a failed
// take means: a session Consul no longer knows is replaced, and a take that
// may have applied although it failed, or that its caller abandoned, is
// undone.
type attempt struct {
	conn     conn
	keys     []string
	value    func() []byte // called for each take: the value says when the key was taken
	flags    uint64
	deadline time.Time
	timeout  time.Duration // the acquire timeout, for messages
	obs      Observer

	// session returns the live session to take the keys with.
	session func(ctx context.Context) (*session, error)
	// undo gives back what a take with s may have got of keys although
	// it failed or was abandoned. It runs from pending, with the local
	// turns of the keys still held, so it may block (for a bounded time).
	undo func(s *session, keys []string)
	// also returns operations to apply with the take, if any.
	also func(s *session) api.KVTxnOps

	// current, if set, returns the session the next take would use, if
	// there is one, without creating one.
	current func() *session
	// q, if set, is the acquire's place in the queue of its one key.
	q *place
	// eager, once taken, says that others want the keys: their holds are
	// watched at once, unless they know who comes next.
	eager bool
	// queue is the line for the one key as the take saw it.
	queue []contender

	// pending, once an acquire failed, waits until its last take's fate
	// is known and undoes it if it may have applied: a take in flight
	// keeps the keys' local turns until then, so that it cannot land on a
	// key that the next local holder took with the same session.
	pending func()

	attempts int                  // writes that tried to take the keys
	sent     time.Time            // when the last take was sent
	last     *session             // the session of the last take
	watches  map[string]*keyWatch // one per key found blocked
}

// contend takes every key, waiting while one is blocked. It returns the
// session that took them and their tokens, or an error wrapping
// ErrNotAcquired once the deadline passed while a key was held.
func (a *attempt) contend(ctx context.Context) (*session, []uint64, error) {
	for {
		if a.q != nil && a.q.inLine() {
			s, token, err := a.q.wait(ctx)
			switch {
			case err != nil:
				return nil, nil, err
			case token != 0: // handed over: the line behind is as last listed
				a.sent, a.eager, a.queue = time.Now(), true, a.q.behind
				return s, []uint64{token}, nil
			}
			// Free with this waiter first in line: take it.
		}
		s, res, err := a.tryTake(ctx)
		if err != nil || res.taken() {
			if a.q != nil && err == nil {
				a.queue, a.eager = a.q.took(s, res.tokens[0], res.also)
			}
			return s, res.tokens, err
		}
		if a.q != nil && !res.delayed && time.Now().Before(a.deadline) {
			a.q.blocked = true // wait in line
			continue
		}
		w := a.watch(a.keys[res.blocked])
		switch err := w.wait(ctx, res.delayed); {
		case errors.Is(err, errDeadline):
			return nil, nil, notAcquiredError(w.holder, a.timeout)
		case err != nil:
			return nil, nil, err
		}
	}
}

// tryTake takes the keys once, with a live session, replacing a session
// that Consul no longer knows.
func (a *attempt) tryTake(ctx context.Context) (*session, takeResult, error) {
	return a.write(ctx, func(s *session) takeSpec {
		spec := takeSpec{keys: a.keys, flags: a.flags, session: s.id}
		if a.also != nil {
			spec.also = a.also(s)
		}
		return spec
	}, func(s *session) { a.undo(s, a.keys) })
}

// write is one write of the acquire that takes keys (its own, or a contender
// key) with a live session and the lock's value, replacing a session that
// Consul no longer knows. A write that failed but may have applied is
// undone by pending, once its fate is known.
func (a *attempt) write(ctx context.Context, spec func(s *session) takeSpec, undo func(s *session)) (*session, takeResult, error) {
	value := a.value()
	if err := checkValueSize(len(a.keys), len(value)); err != nil {
		return nil, takeResult{}, err
	}
	replaced := false
	for {
		s, err := a.session(ctx)
		if err != nil {
			return nil, takeResult{}, err
		}
		a.last = s
		a.attempts++
		a.sent = time.Now()
		t := spec(s)
		t.value = value
		res, d, err := take(ctx, a.conn, t, a.deadline)
		if errors.Is(err, errSessionInvalid) {
			s.invalidate(fmt.Errorf("%w: Consul no longer knows %s", ErrLockLost, s.describe()))
			// A session lost while it held nothing goes unnoticed until
			// its renewal: replace it, once even past the deadline, so
			// that an acquire that tries once gets its one real try.
			if !replaced || time.Now().Before(a.deadline) {
				replaced = true
				continue
			}
			err = fmt.Errorf("%w: %w", ErrConsul, err)
		}
		switch {
		case err != nil:
			if !d.none() {
				a.pendingToo(func() {
					if d.applied() {
						undo(s)
					}
				})
			}
			return nil, takeResult{}, err
		}
		return s, res, nil
	}
}

// pendingToo adds fn to what pending runs.
func (a *attempt) pendingToo(fn func()) {
	if prev := a.pending; prev != nil {
		a.pending = func() { prev(); fn() }
		return
	}
	a.pending = fn
}

// fail takes a failed acquire out of the queue, at once, so that no
// release hands the key to a waiter that left. What a take in doubt may
// have got is undone by pending.
func (a *attempt) fail() {
	if a.q != nil {
		a.q.leave()
	}
}

// settled ends what the acquire still watches, once its holds watch their
// keys.
func (a *attempt) settled() {
	if a.q != nil {
		a.q.unwatch()
	}
}

// ownSession returns the ID of the session the next take would use, or "".
func (a *attempt) ownSession() string {
	s := a.last
	if a.current != nil {
		if cur := a.current(); cur != nil {
			s = cur
		}
	}
	if s == nil {
		return ""
	}
	return s.id
}

// watch returns the keyWatch of key, made on first use.
func (a *attempt) watch(key string) *keyWatch {
	if a.watches == nil {
		a.watches = map[string]*keyWatch{}
	}
	w := a.watches[key]
	if w == nil {
		w = &keyWatch{conn: a.conn, key: key, deadline: a.deadline, onHolder: contended(a.obs, key)}
		a.watches[key] = w
	}
	return w
}

// notAcquiredError says who kept the key, when it is known.
func notAcquiredError(holder *api.KVPair, timeout time.Duration) error {
	if holder == nil {
		return fmt.Errorf("%w: held by another session for the whole acquire timeout (%v)", ErrNotAcquired, timeout)
	}
	who := "session " + holder.Session
	// Name the holder from a value in the default format only: a value of
	// another shape may hold anything, and errors end up in logs.
	if h, err := ParseHolder(holder.Value); err == nil && (h.Host != "" || h.PID != 0) {
		who += fmt.Sprintf(" (host %.100q, pid %d, since %.40q)", h.Host, h.PID, h.LockedAt)
	}
	return fmt.Errorf("%w: held by %s for the whole acquire timeout (%v)", ErrNotAcquired, who, timeout)
}

// contended returns the keyWatch hook that tells o of a holder, or nil.
func contended(o Observer, key string) func(string) {
	if o == nil {
		return nil
	}
	return func(holder string) { o.Contended(ContendEvent{Key: key, Holder: holder}) }
}

// waitBounded waits for done until ctx ends or the deadline passes, for
// clean-up that should finish within an acquire's bounds when it can, and
// otherwise goes on in the background.
func waitBounded(ctx context.Context, done <-chan struct{}, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
	}
}
