package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// Watching a held lock: the holder learns of a loss from a consistent
// blocking query on its key, or, when Consul cannot tell it, from a local
// deadline that passes before Consul could give the key to anyone else.

// maxLifespanMargin is how much earlier than Consul could the holder gives
// up at its local deadline, for clocks that run at slightly different rates.
const maxLifespanMargin = time.Second

// Bounds of the pause before a failed watch query is retried.
const (
	minWatchRetry = 10 * time.Millisecond
	maxWatchRetry = time.Second
)

// hold is one acquisition of a lock.
type hold struct {
	session string
	token   uint64
	expires time.Time // the local deadline: Consul may free the key from then on
}

// holdExpiry is when a hold whose session creation was sent at sent stops
// being guaranteed: Consul starts the session's TTL no earlier than that.
func holdExpiry(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - min(maxLifespanMargin, ttl/10))
}

// watch runs while h is held, until ctx ends, and reports a loss to l.
func (l *EphemeralLock) watch(ctx context.Context, h hold) {
	expiry := time.AfterFunc(time.Until(h.expires), func() {
		l.lose(h, fmt.Sprintf("its maximum lifespan (LockTimeout %v) passed", l.cfg.LockTimeout))
	})
	defer expiry.Stop()
	index, retry := h.token, time.Duration(0)
	for {
		pair, meta, err := l.cfg.Client.KV().Get(l.key, queryOpts(ctx, api.QueryOptions{
			WaitIndex:         index,
			RequireConsistent: true,
		}))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// Consul unreachable or electing a leader: keep asking; the
			// local deadline bounds how long silence is trusted.
			retry = min(max(2*retry, minWatchRetry), maxWatchRetry)
			if sleep(ctx, retry) != nil {
				return
			}
			continue
		case pair == nil:
			l.lose(h, "its key was deleted")
			return
		case pair.Session != h.session:
			l.lose(h, "its key is held by session "+pair.Session)
			return
		}
		index, retry = nextIndex(index, meta.LastIndex), 0
	}
}

// lose records that h was lost, once, while it is still the lock's hold.
func (l *EphemeralLock) lose(h hold, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != stateHeld || l.session != h.session || l.lostErr != nil {
		return
	}
	l.lostErr = fmt.Errorf("%w: %q (session %s, token %d): %s", ErrLockLost, l.key, h.session, h.token, reason)
	l.endHold()
	if l.onLost != nil {
		l.onLost(l.lostErr)
	}
}

// endHold stops the watch and closes Lost's channel, once. l.mu is held.
func (l *EphemeralLock) endHold() {
	if l.stopWatch != nil {
		l.stopWatch()
	}
	select {
	case <-l.lost:
	default:
		close(l.lost)
	}
}

// Lost returns a channel that is closed when the lock is no longer held:
// lost, released, or not acquired. A loss is noticed within about a second of
// Consul deleting the key or giving it to another session, and at the latest
// at the lock's maximum lifespan (LockTimeout, less up to a second for clock
// rates), before Consul could give the key to anyone else. Err tells a loss
// from a release.
func (l *EphemeralLock) Lost() <-chan struct{} { return l.lost }

// Err returns why the lock was lost, an error wrapping ErrLockLost, or nil
// when it was not lost (held, released, or never acquired).
func (l *EphemeralLock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}
