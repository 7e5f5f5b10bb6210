package consullock

// Hooks for the external tests: what a process knows, which Consul cannot
// show.

// KnowsWaiter reports whether a Release of lease would hand its key to a
// waiter: this process's view of the key's line has one.
func KnowsWaiter(lease *Lease) bool { return knowsWaiter(lease.h) }

// LockKnowsWaiter is KnowsWaiter for an EphemeralLock.
func LockKnowsWaiter(l *EphemeralLock) bool {
	h := l.hold()
	return h != nil && knowsWaiter(h)
}

func knowsWaiter(h *held) bool {
	if hb := hubOf(h.conn); hb != nil {
		_, ok := hb.successor(h.key, h.sess.id, h.token, h.queue)
		return ok
	}
	_, ok := firstOther(h.queue, h.sess.id)
	return ok
}
