package consullock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// held is a key held in Consul, from the take until a release or a loss:
// the state machine that EphemeralLock, Lease, election terms and semaphore
// slots share. A hold is valid while its key is exactly as the take left
// it: held by its session, at the index of the take (its fencing token).
// It is lost when the watch sees otherwise, when its session ends (Consul
// invalidated it, or the local deadline passed without a confirmed
// renewal), when its maximum lifespan passes, or when Consul refuses a
// fenced write.
type held struct {
	conn     conn
	key      string
	token    uint64
	sess     *session
	acquired time.Time
	lifespan time.Time     // the end of the maximum lifespan; zero when the session bounds it
	timeout  time.Duration // the lock timeout, for messages
	obs      Observer
	owner    holdOwner
	eager    bool          // others want the key: watched at once, unless the queue names the next
	queue    []contender   // the line for the key as the take saw it
	lost     chan struct{} // closed when the hold ends: released or lost
	finished chan struct{} // closed when the owner has given back what was left

	mu         sync.Mutex
	state      heldState
	err        error         // the loss
	releasing  chan struct{} // while a Release gives the key back
	releaseErr error         // the outcome of the last Release
	pending    error         // a loss that came during a Release, for it to apply if it fails
	pendingFix bool          // and whether that loss leaves the key to give back
	listeners  map[*func(error)]struct{}
	holds      int // reentrant holds beyond the first (see reentrant.go)
	timer      *time.Timer
	watch      *subscription
	ended      bool
}

type heldState int

const (
	heldOn heldState = iota
	heldReleasing
	heldReleased
	heldLost
)

// holdOwner is what differs between lock types: how a key is given back.
type holdOwner interface {
	// release gives the key back for a Release.
	release(ctx context.Context, h *held) error
	// finish runs once when the hold has ended. After a loss, giveBack
	// reports that the session may still hold the key, which must then
	// be given back. It may block: it runs on a goroutine of its own
	// after a loss.
	finish(h *held, giveBack bool)
}

// newHeld makes the hold of a key just taken with s. The caller registers
// it with s (all of a set at once), then starts it.
func newHeld(c conn, key string, token uint64, s *session, owner holdOwner, obs Observer, timeout time.Duration, lifespan time.Time, lost chan struct{}) *held {
	if lost == nil {
		lost = make(chan struct{})
	}
	return &held{conn: c, key: key, token: token, sess: s, acquired: time.Now(), lifespan: lifespan,
		timeout: timeout, obs: obs, owner: owner, lost: lost, finished: make(chan struct{})}
}

// start starts the clocks and the watch of a registered hold.
func (h *held) start() {
	h.mu.Lock()
	if h.ended { // lost already: its session ended as it was registered
		h.mu.Unlock()
		return
	}
	if !h.lifespan.IsZero() {
		h.timer = time.AfterFunc(time.Until(h.lifespan), h.expire)
	}
	h.mu.Unlock()
	// A hold that knows who comes next watches its key alone: it learns of
	// no later arrival, which it would not hand the key to first anyway.
	// Nor need it watch at once: its watch would serve the loss of the key
	// alone, and in a short hold its first answer would be the release.
	_, knowsNext := firstOther(h.queue, h.sess.id)
	sub := watchKey(h.conn, h.key, keyState{exists: true, session: h.sess.id, index: h.token}, h.eager && !knowsNext, knowsNext, h.seen)
	h.mu.Lock()
	ended := h.ended
	if !ended {
		h.watch = sub
	}
	h.mu.Unlock()
	if ended { // lost while the watch was being set up
		sub.cancel()
	}
}

// seen is told by the watch of a state of the key other than the take's.
func (h *held) seen(st keyState) {
	switch {
	case !st.exists:
		h.fail(h.lossf("its key was deleted"), false)
	case st.session == "":
		h.fail(h.lossf("its key was released by someone else"), false)
	case st.session != h.sess.id:
		h.fail(h.lossf("its key is held by session %s", st.session), false)
	default:
		h.fail(h.lossf("its key was written to (at index %d) since it was taken", st.index), true)
	}
}

// sessionEnded is told by the session that it ended with err.
func (h *held) sessionEnded(err error) { h.fail(h.loss(err), false) }

func (h *held) lossf(format string, args ...any) error {
	return h.loss(fmt.Errorf("%w: "+format, append([]any{ErrLockLost}, args...)...))
}

// loss names the hold in cause, which wraps ErrLockLost.
func (h *held) loss(cause error) error {
	return &opError{op: "hold", key: h.key, err: fmt.Errorf("token %d: %w", h.token, cause)}
}

func (h *held) lifespanErr() error {
	return h.lossf("its maximum lifespan (LockTimeout %v) passed", h.timeout)
}

// Err returns why the hold was lost, or nil. It checks the local deadlines
// itself rather than trusting the timers, which a paused process fires late.
func (h *held) Err() error {
	if !h.lifespan.IsZero() && !time.Now().Before(h.lifespan) {
		h.expire()
	}
	if err := h.sess.Err(); err != nil {
		h.sessionEnded(err) // as the session's end would have, had it come first
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// expire ends a hold whose maximum lifespan passed: the holder is told, then
// the key is given back. A hold being released is left to its Release.
func (h *held) expire() { h.fail(h.lifespanErr(), true) }

// fail marks the hold lost with err, and ends it in the background, giving
// the key back when giveBack (the session may still hold it).
func (h *held) fail(err error, giveBack bool) {
	if h.lose(err, giveBack) {
		go h.end(giveBack)
	}
}

// lose marks a held key lost with err and tells whoever listens. It reports
// whether it did: a hold released or already lost is left as it is, and a
// hold being released keeps the first loss for its Release, should that fail.
func (h *held) lose(err error, giveBack bool) bool {
	h.mu.Lock()
	if h.state == heldReleasing && h.pending == nil {
		h.pending, h.pendingFix = err, giveBack
	}
	if h.state != heldOn {
		h.mu.Unlock()
		return false
	}
	h.state, h.err = heldLost, err
	notify := h.takeListeners()
	h.mu.Unlock()
	if h.obs != nil { // told first: when Lost fires, metrics agree
		h.obs.Lost(LostEvent{Key: h.key, Token: h.token, Held: time.Since(h.acquired), Cause: err})
	}
	close(h.lost)
	for _, fn := range notify {
		fn(err)
	}
	return true
}

// end finishes the hold, once: it stops its clock and watch, unregisters it
// from its session, and lets the owner give back what is left.
func (h *held) end(giveBack bool) {
	h.mu.Lock()
	if h.ended {
		h.mu.Unlock()
		return
	}
	h.ended = true
	watch, timer := h.watch, h.timer
	h.watch = nil
	h.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	if watch != nil {
		watch.cancel()
	}
	h.sess.unregister(h)
	h.owner.finish(h, giveBack)
	close(h.finished)
}

// Release gives the key back. A second Release while one is in flight waits
// for its outcome and returns it; a Release of a hold already released does
// nothing, and of a hold lost waits, until ctx ends, for the owner to give
// back what the loss left. It completes even when ctx is cancelled: the
// owner bounds it by cleanupTimeout.
func (h *held) Release(ctx context.Context) error {
	h.mu.Lock()
	if ch := h.releasing; ch != nil {
		h.mu.Unlock()
		<-ch
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.releaseErr
	}
	switch {
	case h.holds > 0: // a reentrant hold ends; the outer ones go on
		h.holds--
		h.mu.Unlock()
		return nil
	case h.state == heldLost:
		h.mu.Unlock()
		select {
		case <-h.finished:
		case <-ctx.Done():
		}
		return nil
	case h.state != heldOn:
		h.mu.Unlock()
		return nil
	}
	h.state, h.pending = heldReleasing, nil
	h.releasing = make(chan struct{})
	h.mu.Unlock()

	err := h.owner.release(ctx, h)
	if h.obs != nil {
		h.obs.Released(ReleaseEvent{Key: h.key, Token: h.token, Held: time.Since(h.acquired), Err: err})
	}
	if err != nil {
		err = wrapOp("release", h.key, err)
	}
	h.mu.Lock()
	close(h.releasing)
	h.releasing, h.releaseErr = nil, err
	if err != nil {
		h.state = heldOn
		pending, fix := h.pending, h.pendingFix
		h.pending = nil
		h.mu.Unlock()
		h.releaseFailed(pending, fix)
		return err
	}
	h.state = heldReleased
	notify := h.takeListeners()
	h.mu.Unlock()
	close(h.lost)
	for _, fn := range notify {
		fn(ErrReleased)
	}
	h.end(false)
	return nil
}

// releaseFailed applies to a hold that is held again what happened during
// the failed Release: a loss, or the end of its maximum lifespan.
func (h *held) releaseFailed(pending error, giveBack bool) {
	switch {
	case pending != nil:
		h.fail(pending, giveBack)
	case !h.lifespan.IsZero() && !time.Now().Before(h.lifespan):
		h.expire()
	}
}

// notify makes the hold call fn when it ends, with the loss or ErrReleased
// (at once if it has ended); the returned function unregisters fn.
func (h *held) notify(fn func(error)) (unregister func()) {
	h.mu.Lock()
	var now error
	switch h.state {
	case heldLost:
		now = h.err
	case heldReleased:
		now = ErrReleased
	default:
		if h.listeners == nil {
			h.listeners = map[*func(error)]struct{}{}
		}
		h.listeners[&fn] = struct{}{}
	}
	h.mu.Unlock()
	if now != nil {
		fn(now)
	}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.listeners, &fn)
	}
}

// takeListeners returns the functions to tell of the end. h.mu is held.
func (h *held) takeListeners() []func(error) {
	fns := make([]func(error), 0, len(h.listeners))
	for fn := range h.listeners {
		fns = append(fns, *fn)
	}
	h.listeners = nil
	return fns
}

// reenter counts one more hold, if the key is still held.
func (h *held) reenter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != heldOn {
		return false
	}
	h.holds++
	return true
}

// CheckOp is a transaction operation that fails unless the key is still as
// the take left it: its index is the token.
func (h *held) CheckOp() *api.KVTxnOp {
	return &api.KVTxnOp{Verb: api.KVCheckIndex, Key: h.key, Index: h.token}
}

// PutFenced writes value under key in one transaction that applies only
// while the hold is valid. When Consul refuses it, the hold is lost from then
// on: its key is no longer as the take left it.
func (h *held) PutFenced(ctx context.Context, key string, value []byte) error {
	if err := validateKey(key); err != nil {
		return wrapOp("fenced put", key, fmt.Errorf("%w: %s", ErrInvalidKey, err))
	}
	h.mu.Lock()
	on := h.state == heldOn
	h.mu.Unlock()
	if !on {
		return wrapOp("fenced put", key, fmt.Errorf("%w: %q is not held", ErrLockLost, h.key))
	}
	ok, resp, err := kvTxn(ctx, h.conn, api.KVTxnOps{h.CheckOp(), {Verb: api.KVSet, Key: key, Value: value}})
	switch {
	case err != nil:
		return wrapOp("fenced put", key, consulError(err))
	case !ok && len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0:
		lost := h.lossf("Consul refused a fenced put: %s", resp.Errors[0].What)
		h.fail(lost, true) // gives the key back if the session still holds it
		return wrapOp("fenced put", key, fmt.Errorf("%w: refused: %s", ErrLockLost, resp.Errors[0].What))
	case !ok:
		return wrapOp("fenced put", key, consulError(txnError(resp)))
	}
	return nil
}

// hold runs fn under an acquired hold, as Locker.Hold and EphemeralLock.Hold
// do: fn's context is cancelled with the loss or ErrReleased when the hold
// ends, and the hold is released however fn ends.
func hold(ctx context.Context, h *held, release func(context.Context) error, carry func(context.Context) context.Context, fn func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer h.notify(cancel)()
	if carry != nil {
		ctx = carry(ctx)
	}
	defer func() {
		if rerr := release(context.WithoutCancel(ctx)); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(ctx)
}
