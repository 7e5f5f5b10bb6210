package consullock

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"
)

// Waiting for a key that a take found blocked: on a Consul blocking query
// while another session holds it, rather than by polling; by polling with
// backoff while a lock delay keeps it, because no blocking query wakes when
// a lock delay ends.

const (
	// maxBlockingWait bounds every blocking query of a waiter, so that a
	// process that goes away frees its connection slot in the agent
	// within that time.
	maxBlockingWait = time.Minute
	// Bounds of the pause between takes while a lock delay is in force.
	minLockDelayPoll = 5 * time.Millisecond
	maxLockDelayPoll = 500 * time.Millisecond
)

// errDeadline ends a wait whose acquire deadline passed.
var errDeadline = errors.New("acquire deadline passed")

// keyWatch waits for one key to be free, until a deadline. It is kept for
// the whole acquire, so that it remembers what it saw between takes.
type keyWatch struct {
	conn     conn
	key      string
	deadline time.Time
	// onHolder, if set, is told of each new holder the wait finds.
	onHolder func(holder string)

	index   uint64      // Consul index of the last answer; 0 asks without blocking
	holder  *api.KVPair // the key as last seen held, for error messages
	poll    time.Duration
	retry   backoff // between queries that failed for a passing reason
	failing error   // the passing failure of the last query, if it failed
}

// wait waits after a take that found the key blocked: out the lock delay,
// or until the key is free. It returns nil when a take is worth trying
// again, errDeadline when the deadline passed first while the key was held,
// the last error when it passed while Consul was failing, or ctx's cause.
func (w *keyWatch) wait(ctx context.Context, delayed bool) error {
	if delayed {
		return w.outLockDelay(ctx)
	}
	w.poll = 0
	return w.untilFree(ctx)
}

// outLockDelay sleeps for the next step of the lock delay's backoff.
func (w *keyWatch) outLockDelay(ctx context.Context) error {
	left := time.Until(w.deadline)
	if left <= 0 {
		return errDeadline
	}
	w.poll = min(max(2*w.poll, minLockDelayPoll), maxLockDelayPoll)
	return sleep(ctx, min(w.poll, left))
}

func (w *keyWatch) untilFree(ctx context.Context) error {
	for {
		pair, err := w.next(ctx)
		if transient(err) {
			w.failing = err
			if ok, serr := w.retry.wait(ctx, w.deadline); serr != nil {
				return serr
			} else if !ok {
				return consulError(err)
			}
			continue
		}
		if errors.Is(err, errDeadline) && w.failing != nil {
			return consulError(w.failing)
		}
		if err != nil {
			return err
		}
		w.retry, w.failing = backoff{}, nil
		if pair == nil || pair.Session == "" {
			return nil
		}
		if w.onHolder != nil && (w.holder == nil || w.holder.Session != pair.Session) {
			w.onHolder(pair.Session)
		}
		w.holder = pair
	}
}

// next answers at once when index is 0, else blocks until the key changes.
// Consul adds up to wait/16 of jitter to a blocking query, so the wait asked
// for is cut by that much to answer before the deadline; the context's
// deadline is only the backstop.
func (w *keyWatch) next(ctx context.Context) (*api.KVPair, error) {
	left := time.Until(w.deadline)
	if left <= 0 {
		return nil, errDeadline
	}
	wait := min(left-left/16, maxBlockingWait)
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
		return nil, err
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
