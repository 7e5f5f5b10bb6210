package consullock

import "github.com/hashicorp/consul/api"

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

// Transient reports whether the library retries a call that failed with
// err, as a passing failure.
func Transient(err error) bool { return transient(err) }

// Watching reports whether a watch query of the locks built on c still
// runs: one lingers for up to watchLinger after its last watcher left.
func Watching(c *api.Client) bool {
	hubs.Lock()
	defer hubs.Unlock()
	for k := range hubs.m {
		if k.c == c {
			return true
		}
	}
	return false
}
