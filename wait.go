package consullock

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"
)

// Bounds of the pause between attempts while Consul's lock delay keeps a free
// key from everyone: no blocking query wakes when a lock delay ends.
const (
	minLockDelayPoll = 5 * time.Millisecond
	maxLockDelayPoll = 500 * time.Millisecond
)

// keyWatch waits for a held key to be freed, on Consul blocking queries
// rather than by polling, until a deadline.
type keyWatch struct {
	conn     conn
	key      string
	deadline time.Time

	// maxWait bounds one blocking query, and beforeQuery runs before each:
	// a waiter whose session ages while it waits renews it there. Optional.
	maxWait     time.Duration
	beforeQuery func(ctx context.Context) error
	// onHolder, if set, is told of each new holder the wait finds.
	onHolder func(holder string)

	index   uint64      // Consul index of the last answer; 0 asks without blocking
	holder  *api.KVPair // the key as last seen held, for error messages
	poll    time.Duration
	sawFree bool    // the last wait ended on a free key, yet the acquire failed
	retry   backoff // between queries that failed for a passing reason
	failing error   // the passing failure of the last query, if it failed
}

// errDeadline ends a wait whose acquire deadline passed.
var errDeadline = errors.New("acquire deadline passed")

// untilFree returns nil when the key may be free, errDeadline when the
// deadline passed first while the key was held, the last error when it
// passed while Consul was failing, or ctx's error.
func (w *keyWatch) untilFree(ctx context.Context) error {
	if w.sawFree {
		// The key looked free but the acquire failed: someone else won the
		// race, or a lock delay is in force. Look again at once to tell which.
		w.index = 0
	}
	for {
		pair, err := w.next(ctx)
		if transient(err) {
			w.failing = err
			if ok, serr := w.retry.wait(ctx, w.deadline); serr != nil {
				return serr
			} else if !ok {
				return err
			}
			continue
		}
		if errors.Is(err, errDeadline) && w.failing != nil {
			return w.failing
		}
		if err != nil {
			return err
		}
		w.retry, w.failing = backoff{}, nil
		if pair == nil || pair.Session == "" {
			return w.free(ctx)
		}
		if w.onHolder != nil && (w.holder == nil || w.holder.Session != pair.Session) {
			w.onHolder(pair.Session)
		}
		w.holder, w.poll, w.sawFree = pair, 0, false
	}
}

// free handles a key seen free. The first time, it is simply free; seen free
// again after a failed acquire, a lock delay is in force and only time ends it.
func (w *keyWatch) free(ctx context.Context) error {
	if !w.sawFree {
		w.sawFree = true
		return nil
	}
	w.poll = min(max(2*w.poll, minLockDelayPoll), maxLockDelayPoll)
	return sleep(ctx, min(w.poll, time.Until(w.deadline)))
}

// next answers at once when index is 0, else blocks until the key changes.
// Consul adds up to wait/16 of jitter to a blocking query, so the wait asked
// for is cut by that much to answer before the deadline; the context's
// deadline is only the backstop.
func (w *keyWatch) next(ctx context.Context) (*api.KVPair, error) {
	if w.beforeQuery != nil {
		if err := w.beforeQuery(ctx); err != nil {
			return nil, err
		}
	}
	left := time.Until(w.deadline)
	if left <= 0 {
		return nil, errDeadline
	}
	wait := left - left/16
	if w.maxWait > 0 {
		wait = min(wait, w.maxWait)
	}
	qctx, cancel := context.WithDeadline(ctx, w.deadline)
	defer cancel()
	pair, meta, err := w.conn.c.KV().Get(w.key, w.conn.query(qctx, api.QueryOptions{
		WaitIndex: w.index,
		WaitTime:  wait,
	}))
	switch {
	case ctx.Err() != nil:
		return nil, context.Cause(ctx)
	case qctx.Err() != nil:
		return nil, errDeadline
	case err != nil:
		return nil, explain(err)
	}
	w.index = nextIndex(w.index, meta.LastIndex)
	return pair, nil
}

// nextIndex follows Consul's rules for blocking-query indexes: start over when
// the index goes backwards (a snapshot restore) and never block on 0.
func nextIndex(prev, last uint64) uint64 {
	if last < prev || last == 0 {
		return 1
	}
	return last
}

// sleep waits d, or returns ctx's error when ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
