package consullock

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Waiting for a key that a take found blocked: through the client's shared
// watches (watch.go) while another session holds it, rather than by
// polling or with a blocking query of its own; by polling with backoff while
// a lock delay keeps it, because no query wakes when a lock delay ends.

const (
	// maxBlockingWait bounds every blocking query that is not a shared
	// watch, so that a process that goes away frees its connection slot in
	// the agent within that time.
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

	holder *api.KVPair // the key as last seen held, for error messages
	poll   time.Duration
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

// untilFree reads the key, and while another session holds it, waits for
// the shared watch to see it change.
func (w *keyWatch) untilFree(ctx context.Context) error {
	pair, err := w.read(ctx)
	if err != nil || pair == nil || pair.Session == "" {
		return err
	}
	w.saw(pair)
	var mu sync.Mutex
	var latest keyState
	changed := make(chan struct{}, 1)
	sub := watchKey(w.conn, w.key, keyState{exists: true, session: pair.Session, index: pair.ModifyIndex}, true, true, func(st keyState) {
		mu.Lock()
		latest = st
		mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer sub.cancel()
	timer := time.NewTimer(time.Until(w.deadline))
	defer timer.Stop()
	for {
		select {
		case <-changed:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
			return errDeadline
		}
		mu.Lock()
		st := latest
		mu.Unlock()
		if !st.exists || st.session == "" {
			return nil
		}
		w.saw(&api.KVPair{Key: w.key, Session: st.session, ModifyIndex: st.index})
	}
}

// read reads the key at once, retrying passing failures until the
// deadline.
func (w *keyWatch) read(ctx context.Context) (*api.KVPair, error) {
	var pair *api.KVPair
	err := retry(ctx, w.deadline, func() error {
		return w.conn.call(ctx, func() (err error) {
			pair, _, err = w.conn.c.KV().Get(w.key, w.conn.query(ctx, api.QueryOptions{}))
			return err
		})
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, context.Cause(ctx)
	case err != nil:
		return nil, consulError(err)
	}
	return pair, nil
}

// saw records a holder, and tells onHolder of a new one.
func (w *keyWatch) saw(pair *api.KVPair) {
	if w.onHolder != nil && (w.holder == nil || w.holder.Session != pair.Session) {
		w.onHolder(pair.Session)
	}
	if w.holder == nil || w.holder.Session != pair.Session || pair.Value != nil {
		w.holder = pair
	}
}

// nextIndex follows Consul's rules for blocking-query indexes: start over when
// the index goes backwards (a snapshot restore) and never block on 0.
func nextIndex(prev, last uint64) uint64 {
	if last < prev || last == 0 {
		return 1
	}
	return last
}
