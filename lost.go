package consullock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Watching a held lock: the holder learns of a loss from a consistent
// blocking query on its key, or, when Consul cannot tell it, from a local
// deadline that passes before Consul could give the key to anyone else.
// With renewal, each renewal Consul confirms moves that deadline on.

// maxLifespanMargin is how much earlier than Consul could, at most, the
// holder gives up at its local deadline, for clocks that run at slightly
// different rates.
const maxLifespanMargin = time.Second

// holdExpiry is when a hold whose session was created or last renewed by a
// request sent at sent stops being guaranteed: Consul restarts the session's
// TTL no earlier than that.
func holdExpiry(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - min(maxLifespanMargin, ttl/10))
}

// startWatch starts the goroutines that watch and renew h. l.mu is held.
func (l *EphemeralLock) startWatch(ctx context.Context, h hold) {
	ctx = context.WithoutCancel(ctx)
	l.expiry = time.AfterFunc(time.Until(h.expires), func() { l.lose(h, l.expiredReason()) })
	var watchCtx, renewCtx context.Context
	watchCtx, l.stopWatch = context.WithCancel(ctx)
	renewCtx, l.stopRenew = context.WithCancel(ctx)
	go l.watch(watchCtx, h)
	if l.cfg.Renew {
		go l.renew(renewCtx, h)
	}
}

// watch reports a loss of h seen in Consul.
func (l *EphemeralLock) watch(ctx context.Context, h hold) {
	watchHeld(ctx, l.conn, l.key, h.session, h.token, false, l.lost, func(reason string, _ bool) { l.lose(h, reason) })
}

// renew renews h's session until ctx ends, moving the local deadline on.
func (l *EphemeralLock) renew(ctx context.Context, h hold) {
	renewEvery(ctx, l.conn, h.session, l.cfg.LockTimeout, h.expires, l.cfg.Observer,
		func(expires time.Time) { h.expires = expires; l.extend(h) },
		func() { l.lose(h, "Consul invalidated its session") })
}

// extend moves the local deadline of the current hold to h.expires.
func (l *EphemeralLock) extend(h hold) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == stateHeld && l.hold.session == h.session && !l.ended() {
		l.hold.expires = h.expires
		l.expiry.Reset(time.Until(h.expires))
	}
}

// lose records that h was lost, once, while it is still the lock's hold,
// and stops everything that watched or renewed it.
func (l *EphemeralLock) lose(h hold, reason string) {
	l.mu.Lock()
	lost := l.loseLocked(h, reason)
	l.mu.Unlock()
	l.observeLoss(lost, h)
}

// observeLoss tells the Observer of a loss that loseLocked reported, outside
// l.mu: an Observer may call the lock's methods.
func (l *EphemeralLock) observeLoss(cause error, h hold) {
	if o := l.cfg.Observer; o != nil && cause != nil {
		o.Lost(LostEvent{Key: l.key, Token: h.token, Held: time.Since(h.acquired), Cause: cause})
	}
}

// expiredReason is why a hold is lost at its local deadline.
func (l *EphemeralLock) expiredReason() string {
	return fmt.Sprintf("its session's TTL (LockTimeout %v) ran out unconfirmed", l.cfg.LockTimeout)
}

// loseLocked is lose with l.mu held; it returns the loss, or nil if h was
// not lost now.
func (l *EphemeralLock) loseLocked(h hold, reason string) error {
	if l.state != stateHeld || l.hold.session != h.session || l.lostErr != nil || l.releasing != nil {
		return nil
	}
	l.lostErr = fmt.Errorf("%w: %q (session %s, token %d): %s", ErrLockLost, l.key, h.session, h.token, reason)
	l.endHold(true)
	return l.lostErr
}

// errReleased is the cause of Hold's context when the lock was released
// while its function ran, by a Release from another goroutine.
var errReleased = errors.New("consullock: lock released")

// ended reports whether the hold has ended (Lost's channel is closed).
func (l *EphemeralLock) ended() bool {
	select {
	case <-l.lost:
		return true
	default:
		return false
	}
}

// endHold stops renewing, and watching too when stopWatch is set, closes
// Lost's channel, once, and cancels Hold's context. l.mu is held.
func (l *EphemeralLock) endHold(stopWatch bool) {
	if l.expiry != nil {
		l.expiry.Stop()
		l.stopRenew()
		if stopWatch {
			l.stopWatch()
		}
	}
	if l.ended() {
		return
	}
	close(l.lost)
	if l.onLost != nil {
		cause := l.lostErr
		if cause == nil {
			cause = errReleased
		}
		l.onLost(cause)
	}
}

// Lost returns a channel that is closed when the lock is no longer held:
// lost, released, or not acquired. A loss is noticed within about a second of
// Consul deleting the key or giving it to another session, and at the latest
// at the local deadline: LockTimeout (less up to a second for clock rates)
// after the session was created or last renewed, before Consul could give the
// key to anyone else. Err tells a loss from a release. After a loss nothing
// renews the session any more.
func (l *EphemeralLock) Lost() <-chan struct{} { return l.lost }

// Err returns why the lock was lost, an error wrapping ErrLockLost, or nil
// when it was not lost (held, released, or never acquired). It checks the
// local deadline itself rather than trusting a timer: a holder that calls Err
// before each step of its work never takes a step after the deadline, even
// when a pause (a long GC, SIGSTOP, a frozen VM) delayed every goroutine.
func (l *EphemeralLock) Err() error {
	l.mu.Lock()
	h := l.hold
	var lost error
	if l.state == stateHeld && !time.Now().Before(h.expires) {
		lost = l.loseLocked(h, l.expiredReason())
	}
	err := l.lostErr
	l.mu.Unlock()
	l.observeLoss(lost, h)
	return err
}
