package consullock

import "time"

// Observer receives the events of a lock's life, for logs and metrics. Its
// methods are called on the goroutine of the lock operation or of its
// watch, so they must be quick and safe for concurrent use. An Observer
// never sees an ACL token or a lock's value. Embed NopObserver to implement
// only some of the methods. A nil Observer (the default) costs nothing.
type Observer interface {
	// Acquired reports the end of an acquire: Err is nil when the lock was
	// taken, wraps ErrNotAcquired when another holder kept it for the whole
	// timeout, and is the failure otherwise.
	Acquired(AcquireEvent)
	// Contended reports that an acquire found the key held by another
	// session and waits for it.
	Contended(ContendEvent)
	// Released reports a Release (or a failed one).
	Released(ReleaseEvent)
	// RenewFailed reports a renewal of a session that failed; it is retried
	// until the local deadline.
	RenewFailed(RenewEvent)
	// Lost reports a lock lost while held.
	Lost(LostEvent)
}

// AcquireEvent describes the end of an acquire.
type AcquireEvent struct {
	Key      string
	Token    uint64        // the fencing token, when acquired
	Wait     time.Duration // from the call to its return
	Attempts int           // writes that tried to take the key
	Err      error
}

// observeAcquired tells o, if any, of the end of an acquire of keys that
// began at start: one event per key, each with its lease's token.
func observeAcquired(o Observer, keys []string, start time.Time, attempts int, leases []*Lease, err error) {
	if o == nil {
		return
	}
	wait := time.Since(start)
	for i, k := range keys {
		e := AcquireEvent{Key: k, Wait: wait, Attempts: attempts, Err: err}
		if i < len(leases) && leases[i] != nil {
			e.Token = leases[i].h.token
		}
		o.Acquired(e)
	}
}

// ContendEvent describes a key found held by another session.
type ContendEvent struct {
	Key    string
	Holder string // the holder's session ID
}

// ReleaseEvent describes a release.
type ReleaseEvent struct {
	Key   string
	Token uint64
	Held  time.Duration // from the acquire's return to the release
	Err   error
}

// RenewEvent describes a failed renewal of a session.
type RenewEvent struct {
	Session string
	Err     error
}

// LostEvent describes a lock lost while held.
type LostEvent struct {
	Key   string
	Token uint64
	Held  time.Duration // from the acquire's return to the loss
	Cause error         // wraps ErrLockLost
}

// NopObserver is an Observer that ignores every event; embed it to
// implement only some methods.
type NopObserver struct{}

// Acquired ignores the event.
func (NopObserver) Acquired(AcquireEvent) {}

// Contended ignores the event.
func (NopObserver) Contended(ContendEvent) {}

// Released ignores the event.
func (NopObserver) Released(ReleaseEvent) {}

// RenewFailed ignores the event.
func (NopObserver) RenewFailed(RenewEvent) {}

// Lost ignores the event.
func (NopObserver) Lost(LostEvent) {}
