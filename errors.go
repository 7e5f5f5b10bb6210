package consullock

import "errors"

// Sentinel errors. Every error that consullock returns for one of these
// conditions wraps the sentinel with %w and adds the key and the detail, so
// callers test with errors.Is and log the message.
var (
	// ErrNotAcquired reports that another holder kept the lock for the whole
	// acquire timeout. The attempt's session has been destroyed.
	ErrNotAcquired = errors.New("consullock: lock not acquired")

	// ErrAlreadyUsed reports a second Acquire on a single-use lock.
	// Build a new lock for each critical section.
	ErrAlreadyUsed = errors.New("consullock: lock already used")

	// ErrInvalidKey reports a key that Consul would reject or that is unsafe
	// to use as a lock name. It is returned when the lock is built, before
	// anything is sent to Consul.
	ErrInvalidKey = errors.New("consullock: invalid key")

	// ErrInvalidOption reports an option or a Defaults field outside its
	// documented range. It is returned when the lock is built, before
	// anything is sent to Consul.
	ErrInvalidOption = errors.New("consullock: invalid option")

	// ErrPermissionDenied reports that Consul refused the ACL token; the
	// message has Consul's words, which name the missing permission (such as
	// session:write on the agent's node, or key:write on the lock's key).
	ErrPermissionDenied = errors.New("consullock: permission denied")

	// ErrLockLost is the cause (context.Cause) of the context that Hold
	// gives its function when the lock is lost while held: its key was
	// deleted or taken over, its session invalidated, or its maximum lifespan
	// ran out.
	ErrLockLost = errors.New("consullock: lock lost")
)
