package consullock

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/consul/api"
)

// Fair queueing (WithFairQueueing): waiters of every process are served in
// arrival order. Before contending, a waiter enqueues a contender key,
// KEY.queue/<session>-<nonce>, held by its session so that it vanishes with
// a dead process, and waits on a blocking query until the contender created
// just before it is gone: each waiter watches only its predecessor, as
// etcd's Mutex does, and only the head of the queue contends for the lock,
// so no waiter starves and a release wakes one waiter, not all. The head
// takes the lock and leaves the queue in one write.

func queuePrefix(key string) string { return key + ".queue/" }

// errLeftQueue reports a contender key that is gone while its waiter still
// waits: its session was invalidated, or someone deleted it.
var errLeftQueue = errors.New("the contender key left the queue")

// fairQueue is one waiter's place in the queue of a key.
type fairQueue struct {
	lk *Locker
	a  *attempt
	me string   // the contender key, once enqueued
	by *session // the session that holds it
}

// queue makes a's takes wait for their turn in the key's queue, and leave
// it with the take.
func (lk *Locker) queue(a *attempt) {
	q := &fairQueue{lk: lk, a: a}
	a.before = q.head
	a.also = func(*session) api.KVTxnOps { return api.KVTxnOps{{Verb: api.KVDelete, Key: q.me}} }
	a.onFail = q.leave
}

// head makes sure that s holds a contender key in the queue, and that it is
// the first; after waiting for a predecessor, it waits for the lock to be
// free too, so that the first take is not a write in vain.
func (q *fairQueue) head(ctx context.Context, s *session) error {
	if q.by == s {
		return nil
	}
	for {
		if q.me != "" {
			q.leave()
		}
		if err := q.enqueue(ctx, s); err != nil {
			return err
		}
		waited, err := q.waitForPredecessors(ctx)
		if errors.Is(err, errLeftQueue) {
			continue // enqueue again: a take with a dead session will say so
		}
		if err != nil {
			return err
		}
		if waited {
			return q.a.watch(q.a.keys[0]).wait(ctx, false)
		}
		return nil
	}
}

func (q *fairQueue) enqueue(ctx context.Context, s *session) error {
	me := queuePrefix(q.a.keys[0]) + s.id + "-" + nonce()
	res, d, err := take(ctx, q.lk.conn, takeSpec{keys: []string{me}, session: s.id}, q.a.deadline)
	switch {
	case err != nil:
		if !d.none() {
			go func() {
				if d.applied() {
					q.lk.giveBackContender(me, s)
				}
			}()
		}
		return fmt.Errorf("enqueue: %w", err)
	case !res.taken():
		return fmt.Errorf("%w: enqueue: a new contender key was refused", ErrConsul)
	}
	q.me, q.by = me, s
	return nil
}

// waitForPredecessors waits until the contender key heads the queue.
func (q *fairQueue) waitForPredecessors(ctx context.Context) (waited bool, err error) {
	for {
		pred, err := q.predecessor(ctx)
		if err != nil || pred == "" {
			return waited, err
		}
		waited = true
		w := &keyWatch{conn: q.lk.conn, key: pred, deadline: q.a.deadline}
		switch err := w.untilFree(ctx); {
		case errors.Is(err, errDeadline):
			return waited, notAcquiredError(nil, q.a.timeout)
		case err != nil:
			return waited, err
		}
	}
}

// predecessor returns the contender key queued just before ours, or "".
func (q *fairQueue) predecessor(ctx context.Context) (string, error) {
	c := q.lk.conn
	var pairs api.KVPairs
	err := retry(ctx, q.a.deadline, func() (err error) {
		return c.call(ctx, func() (err error) {
			pairs, _, err = c.c.KV().List(queuePrefix(q.a.keys[0]), c.query(ctx, api.QueryOptions{RequireConsistent: true}))
			return err
		})
	})
	if err != nil {
		return "", consulError(err)
	}
	pairs = slices.DeleteFunc(pairs, func(p *api.KVPair) bool { return p.Session == "" })
	slices.SortFunc(pairs, func(a, b *api.KVPair) int { return cmpIndex(a.CreateIndex, b.CreateIndex) })
	i := slices.IndexFunc(pairs, func(p *api.KVPair) bool { return p.Key == q.me })
	switch {
	case i < 0:
		return "", errLeftQueue
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

// leave removes the contender key after an acquire that failed, in the
// background.
func (q *fairQueue) leave() {
	if q.me != "" {
		go q.lk.giveBackContender(q.me, q.by)
		q.me, q.by = "", nil
	}
}

func (lk *Locker) giveBackContender(key string, s *session) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if deleteIfHeld(ctx, lk.conn, key, s.id) != nil {
		s.abandon(fmt.Errorf("%w: could not give back the contender key %q", ErrLockLost, key))
	}
}
