package consullock

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error that consullock returns wraps one of these
// (or a context's error), so callers test with errors.Is and log the
// message, which adds the key and the detail.
var (
	// ErrNotAcquired reports that another holder kept the lock for the whole
	// acquire timeout. Nothing is left held: the attempt's session, if it
	// had one of its own, is destroyed.
	ErrNotAcquired = errors.New("lock not acquired")

	// ErrAlreadyUsed reports a second Acquire on a single-use lock.
	// Build a new lock for each critical section.
	ErrAlreadyUsed = errors.New("lock already used")

	// ErrInvalidKey reports a key that Consul would reject or that is unsafe
	// to use as a lock name. It is returned before anything is sent to
	// Consul.
	ErrInvalidKey = errors.New("invalid key")

	// ErrInvalidOption reports an option or a Defaults field outside its
	// documented range, or an option given to a constructor it does not
	// apply to. It is returned before anything is sent to Consul.
	ErrInvalidOption = errors.New("invalid option")

	// ErrPermissionDenied reports that Consul refused the ACL token; the
	// message has Consul's words, which name the missing permission (such as
	// session:write on the agent's node, or key:write on the lock's key).
	ErrPermissionDenied = errors.New("permission denied")

	// ErrLockLost reports a lock that is no longer held although it was not
	// released: its key was deleted, taken over or written to, its session
	// was invalidated or not renewed in time, or its maximum lifespan ran
	// out. It is what Err returns then, and the cause (context.Cause) of the
	// context that Hold gives its function.
	ErrLockLost = errors.New("lock lost")

	// ErrReleased is the cause of the context that Hold gives its function
	// when another goroutine released the lock while the function ran.
	ErrReleased = errors.New("lock released")

	// ErrClosed reports an Acquire on a Locker that was closed.
	ErrClosed = errors.New("the Locker is closed")

	// ErrNoLeader reports an election that has no leader now.
	ErrNoLeader = errors.New("no leader")

	// ErrConsul reports that Consul could not do what was asked: it could
	// not be reached, kept failing for a passing reason (a leader election,
	// an overloaded agent, HTTP 429 or 5xx) until the deadline, or answered
	// in a way that consullock cannot use. The message has Consul's words.
	ErrConsul = errors.New("call to Consul failed")
)

// errSessionInvalid reports that Consul no longer knows a session. It never
// reaches a caller: the session's holds are lost, or a new session is made.
var errSessionInvalid = errors.New("session invalidated")

// opError is every error a caller gets from a method of this package: the
// operation, the key and the cause, with the package's name once, in front.
type opError struct {
	op  string
	key string
	err error
}

func (e *opError) Error() string {
	if e.key == "" {
		return fmt.Sprintf("consullock: %s: %v", e.op, e.err)
	}
	return fmt.Sprintf("consullock: %s %q: %v", e.op, e.key, e.err)
}

func (e *opError) Unwrap() error { return e.err }

// wrapOp names the operation and key of err, unless err is nil or already
// names one: an error passes through several layers, and gets one prefix.
func wrapOp(op, key string, err error) error {
	var named *opError
	if err == nil || errors.As(err, &named) {
		return err
	}
	return &opError{op: op, key: key, err: err}
}
