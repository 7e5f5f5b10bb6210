package consullock

import (
	"context"
	"fmt"
	"slices"
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
	ctx = ahead(ctx)
	next, ok := successorOf(c, key, session, token, queue)
	if !ok && contended {
		next, ok = firstOther(readLine(ctx, c, key), session)
	}
	// A contender this process knew of may have left since: the line read
	// then names the next one, which costs a read rather than the second
	// write of a key given back and taken.
	for tries := 0; ok; tries++ {
		handed, left, err := handTo(ctx, c, key, session, token, next)
		if err != nil || handed || !left || tries == maxHandTries-1 {
			return handed, err
		}
		next, ok = firstOther(slices.DeleteFunc(readLine(ctx, c, key), func(c contender) bool {
			return c.key == next.key && c.index == next.index
		}), session)
	}
	return false, nil
}

// lineReadTimeout bounds a read of the line at a release.
const lineReadTimeout = time.Second

// maxHandTries bounds the contenders one release tries to hand its key to.
const maxHandTries = 3

// handTo hands key, which session holds at token, to contender next in one
// transaction. left reports that it did not because next has left the line.
func handTo(ctx context.Context, c conn, key, session string, token uint64, next contender) (handed, left bool, err error) {
	ops := api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: key, Index: token},
		// The contender key as seen: still held by next's session, whose
		// end would have changed or deleted it, and the turn seen, not a
		// later one of the same session under the same name (queue.go,
		// contenderKey), which waits elsewhere. (A delete-cas would not
		// do: Consul counts the delete of a missing key as done.)
		{Verb: api.KVCheckIndex, Key: next.key, Index: next.index},
		{Verb: api.KVUnlock, Key: key, Session: session},
		{Verb: api.KVLock, Key: key, Value: next.value, Flags: next.flags, Session: next.session},
		{Verb: api.KVDelete, Key: next.key},
	}
	err = retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		ok, resp, err := kvTxn(ctx, c, ops)
		switch {
		case err != nil:
			return err
		case ok:
			handed, left = true, false
			note(c, key, keyState{exists: true, session: next.session, index: lastIndexOf(resp, key)})
			return nil
		case len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0:
			// The key is not as the holder left it: if a try whose answer
			// was lost handed it over, it is the contender's now.
			pair, err := readKey(ctx, c, key)
			handed, left = err == nil && pair != nil && pair.Session == next.session, false
			return err
		}
		left = true
		return nil
	})
	if err != nil {
		return false, false, fmt.Errorf("hand over: %w", consulError(err))
	}
	return handed, left, nil
}

// successorOf is the first contender for key, other than session's, in
// the newest view this process has of the line.
func successorOf(c conn, key, session string, token uint64, queue []contender) (contender, bool) {
	if h := hubOf(c); h != nil {
		return h.successor(key, session, token, queue)
	}
	return firstOther(queue, session)
}

// readLine reads the line for key once, as a hint: nil if it fails or
// takes longer than lineReadTimeout, which keeps most of a release's
// budget for the release itself when Consul is slow (in an election).
func readLine(ctx context.Context, c conn, key string) []contender {
	ctx, cancel := context.WithTimeout(ctx, lineReadTimeout)
	defer cancel()
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
