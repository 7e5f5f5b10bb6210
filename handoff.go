package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// The handoff: a release that finds contenders waiting (queue.go) gives the
// key to the first of them in one transaction, which applies only while the
// holder holds the key at its token and the contender's session holds its
// contender key. Anything else leaves the key as it was, to be given back
// in the ordinary way.

// giveOn gives back key, which session holds at token: to the first
// contender in line, if this process knows of one, else by deleting it.
// queue is the line as the take saw it, if known; contended says that
// others wanted the key during the hold (see handOver).
func giveOn(ctx context.Context, c conn, key, session string, token uint64, queue []contender, contended bool) error {
	if handed, err := handOver(ctx, c, key, session, token, queue, contended); err != nil || handed {
		return err
	}
	err := giveBackKey(ctx, c, key, session, token)
	if err == nil {
		noteReleased(c, key, session)
	}
	return err
}

// handOver hands key, which session holds at token, to the first contender
// in line that this process knows of (from the newest of a watch's answers
// and queue, the line as the take saw it), in one transaction. It reports
// false when it knows of none, or the one it knew of has left: the caller
// gives the key back instead.
//
// A contended hold that knows of nobody reads the line first. Its view
// may predate the newest enqueue (a short hold is not watched), and a key
// given back then costs two writes where a handoff costs one: the delete,
// and the take of the waiter it wakes. The read is no consensus write.
func handOver(ctx context.Context, c conn, key, session string, token uint64, queue []contender, contended bool) (bool, error) {
	next, ok := successorOf(c, key, session, token, queue)
	if !ok && contended {
		next, ok = firstOther(readLine(ctx, c, key), session)
	}
	if !ok {
		return false, nil
	}
	ops := api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: key, Index: token},
		{Verb: api.KVCheckSession, Key: next.key, Session: next.session},
		// The turn seen, not a later one of the same session under the
		// same name (queue.go, contenderKey), which waits elsewhere.
		{Verb: api.KVCheckIndex, Key: next.key, Index: next.index},
		{Verb: api.KVUnlock, Key: key, Session: session},
		{Verb: api.KVLock, Key: key, Value: next.value, Flags: next.flags, Session: next.session},
		{Verb: api.KVDelete, Key: next.key},
	}
	var handed bool
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		ok, resp, err := kvTxn(ctx, c, ops)
		switch {
		case err != nil:
			return err
		case ok:
			handed = true
			note(c, key, keyState{exists: true, session: next.session, index: lastIndexOf(resp, key)})
			return nil
		case len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0:
			// The key is not as the holder left it: if a try whose answer
			// was lost handed it over, it is the contender's now.
			pair, err := readKey(ctx, c, key)
			handed = err == nil && pair != nil && pair.Session == next.session
			return err
		}
		return nil // the contender left
	})
	if err != nil {
		return false, fmt.Errorf("hand over: %w", consulError(err))
	}
	return handed, nil
}

// successorOf is the first contender for key, other than session's, in
// the newest view this process has of the line.
func successorOf(c conn, key, session string, token uint64, queue []contender) (contender, bool) {
	if h := hubOf(c); h != nil {
		return h.successor(key, session, token, queue)
	}
	return firstOther(queue, session)
}

// readLine reads the line for key once, as a hint: nil if it fails.
func readLine(ctx context.Context, c conn, key string) []contender {
	var pairs api.KVPairs
	err := c.call(ctx, func() (err error) {
		pairs, _, err = c.c.KV().List(queuePrefix(key), c.query(ctx, api.QueryOptions{}))
		return err
	})
	if err != nil {
		return nil
	}
	return contendersIn(pairs)[key]
}

// firstOther is the first contender in queue not of session exclude.
func firstOther(queue []contender, exclude string) (contender, bool) {
	for _, c := range queue {
		if c.session != exclude {
			return c, true
		}
	}
	return contender{}, false
}

// lastIndexOf is the ModifyIndex of key's last result in resp.
func lastIndexOf(resp *api.KVTxnResponse, key string) uint64 {
	var index uint64
	for _, r := range resp.Results {
		if r != nil && r.Key == key {
			index = r.ModifyIndex
		}
	}
	return index
}
