package consullock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// Fair queueing (WithFairQueueing): waiters of every process are served in
// arrival order. Before contending, a waiter enqueues a contender key,
// KEY.queue/<session>, held by its session so that it vanishes with a dead
// process, and waits on a blocking query until the contender created just
// before it is gone: each waiter watches only its predecessor, as etcd's
// Mutex does, and only the head of the queue contends for the lock, so no
// waiter starves and a release wakes one waiter, not all. The head takes the
// lock and leaves the queue in one write.

func queuePrefix(key string) string { return key + ".queue/" }

// enqueue adds a contender key of the session's for key, me, and waits
// until it heads the queue. waited reports that it had a predecessor, which
// has most likely just taken the lock.
func (lk *Locker) enqueue(ctx context.Context, key, session string, deadline time.Time) (me string, waited bool, err error) {
	me = queuePrefix(key) + session + "-" + nonce()
	if _, _, err := takeKey(ctx, lk.conn, me, nil, session, deadline, lk.giveBackAbandoned(me)); err != nil {
		return me, false, fmt.Errorf("enqueue: %w", err)
	}
	for {
		pred, err := lk.predecessor(ctx, key, me)
		if err != nil || pred == "" {
			return me, waited, err
		}
		waited = true
		w := &keyWatch{conn: lk.conn, key: pred, deadline: deadline}
		if err := w.untilFree(ctx); err != nil {
			return me, waited, err
		}
	}
}

// leaveQueue is the operation, part of the write that takes the lock, that
// removes the contender key.
func leaveQueue(contender string) *api.KVTxnOp {
	return &api.KVTxnOp{Verb: api.KVDelete, Key: contender}
}

// predecessor returns the contender key queued just before me, or "".
func (lk *Locker) predecessor(ctx context.Context, key, me string) (string, error) {
	pairs, _, err := lk.conn.c.KV().List(queuePrefix(key), lk.conn.query(ctx, api.QueryOptions{RequireConsistent: true}))
	if err != nil {
		return "", explain(err)
	}
	pairs = slices.DeleteFunc(pairs, func(p *api.KVPair) bool { return p.Session == "" })
	slices.SortFunc(pairs, func(a, b *api.KVPair) int { return cmpIndex(a.CreateIndex, b.CreateIndex) })
	i := slices.IndexFunc(pairs, func(p *api.KVPair) bool { return p.Key == me })
	switch {
	case i < 0:
		return "", errors.New("the contender key left the queue")
	case i == 0:
		return "", nil
	}
	return pairs[i-1].Key, nil
}

func cmpIndex(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// dequeue removes a contender key after an acquire that failed.
func (lk *Locker) dequeue(ctx context.Context, contender, session string) {
	cctx, cancel := detached(ctx)
	defer cancel()
	deleteIfHeld(cctx, lk.conn, contender, session)
}
