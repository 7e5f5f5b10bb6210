package consullock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// takeKey tries to take key for session, storing value, retrying transient
// failures until deadline, and returns the fencing token of the hold, or 0
// when another session holds the key or a lock delay is in force. maybeTaken
// reports a failed attempt that may have been applied all the same.
//
// It is one consensus write, like python-consul-lock's PUT ?acquire, but as
// a transaction so that Consul answers with the index of the write: the
// fencing token, at no extra round trip. Retrying is safe: a session may take
// a key it already holds.
//
// also are operations to apply in the same transaction when the key is taken.
// abandoned, if not nil, gives back a key that an attempt abandoned by ctx's
// end took all the same (see kvTxnDetached).
func takeKey(ctx context.Context, c conn, key string, value []byte, session string, deadline time.Time, abandoned func([]*api.KVPair), also ...*api.KVTxnOp) (token uint64, maybeTaken bool, err error) {
	err = retry(ctx, deadline, func() (err error) {
		token, err = takeKeyOnce(ctx, c, key, value, session, abandoned, also)
		maybeTaken = maybeTaken || !unapplied(err)
		return err
	})
	if err != nil {
		return 0, maybeTaken, fmt.Errorf("acquire key: %w", explain(err))
	}
	return token, false, nil
}

func takeKeyOnce(ctx context.Context, c conn, key string, value []byte, session string, abandoned func([]*api.KVPair), also api.KVTxnOps) (uint64, error) {
	ops := append(api.KVTxnOps{{Verb: api.KVLock, Key: key, Value: value, Session: session}}, also...)
	ok, resp, err := kvTxnDetached(ctx, c, ops, abandoned)
	switch {
	case err != nil:
		return 0, err
	case ok && len(resp.Results) >= 1 && resp.Results[0].ModifyIndex != 0:
		return resp.Results[0].ModifyIndex, nil
	case ok:
		return 0, errors.New("Consul's answer has no index")
	}
	for _, e := range resp.Errors {
		if !heldElsewhere(e.What) {
			return 0, errors.New(e.What)
		}
	}
	return 0, nil
}

// heldElsewhere recognises Consul's words (agent/consul/txn_endpoint.go,
// state/txn.go) for a lock operation on a key that another session holds or
// that a lock delay keeps.
func heldElsewhere(what string) bool {
	return strings.Contains(what, "lock is already held") || strings.Contains(what, "due to lock delay")
}

// releaseKey gives back a key taken with token by a session no one else
// uses: one DELETE ?cas=token, which applies only if the key is still as the
// acquiring write left it, and which Consul serves faster than a transaction.
// If the key changed since (an operator wrote to it), it falls back to
// deleteIfHeld. A key already gone counts as released.
func releaseKey(ctx context.Context, c conn, key, session string, token uint64) error {
	deleted, err := deleteIfUnchanged(ctx, c, key, token)
	if err != nil || deleted {
		return err
	}
	return deleteIfHeld(ctx, c, key, session)
}

// deleteIfUnchanged deletes key only if its ModifyIndex is still token: the
// release of a key whose session other holders share, where a check of the
// session could not tell one holder from the next. A key already gone counts
// as deleted; reports whether the key was deleted or gone.
func deleteIfUnchanged(ctx context.Context, c conn, key string, token uint64) (bool, error) {
	var deleted bool
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() (err error) {
		deleted, _, err = c.c.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: token}, c.write(ctx))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("delete key: %w", explain(err))
	}
	return deleted, nil
}

// deleteIfHeld deletes key in one transaction that applies only while
// session holds it. A key no longer held by session is left alone.
func deleteIfHeld(ctx context.Context, c conn, key, session string) error {
	ops := api.KVTxnOps{
		{Verb: api.KVCheckSession, Key: key, Session: session},
		{Verb: api.KVDelete, Key: key},
	}
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		_, _, err := kvTxn(ctx, c, ops)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete key: %w", explain(err))
	}
	return nil
}

// CheckOp returns a transaction operation that fails unless this lock's
// session still holds its key: put it first in a Consul transaction
// (api.KV.Txn or api.Txn.Txn) and the rest of the transaction applies only
// while the lock is held, like etcd's Mutex.IsOwner. On a lock not held, the
// operation names a session that cannot exist, so it always fails.
func (l *EphemeralLock) CheckOp() *api.KVTxnOp {
	return checkHeld(l.key, l.Session())
}

// notHeldSession is no session's ID: Consul's IDs are UUIDs.
const notHeldSession = "consullock-lock-not-held"

func checkHeld(key, session string) *api.KVTxnOp {
	if session == "" {
		// An empty session would pass the check on a key that exists unlocked.
		session = notHeldSession
	}
	return &api.KVTxnOp{Verb: api.KVCheckSession, Key: key, Session: session}
}

// PutFenced writes value under key in one consensus write that applies only
// if this lock still holds its key at that moment, so a holder that lost the
// lock without noticing cannot overwrite what its successor wrote. When the
// lock is not held, nothing is written and the error wraps ErrLockLost; when
// it was Consul that refused, the lock is lost from then on (Lost and Err
// say so), as the watch would have found a moment later.
//
// A resource outside Consul gets the same protection from Token: store the
// highest token seen with the data and refuse writes that carry a lower one.
func (l *EphemeralLock) PutFenced(ctx context.Context, key string, value []byte) error {
	check := l.CheckOp()
	err := putFenced(ctx, l.conn, check, l.key, key, value)
	if errors.Is(err, ErrLockLost) && check.Session != notHeldSession {
		l.mu.Lock()
		h := l.hold
		l.mu.Unlock()
		if h.session == check.Session {
			l.lose(h, "Consul refused a fenced put: the session no longer holds the key")
		}
	}
	return err
}

// putFenced writes value under key in one transaction after check, the
// condition that the lock named lockKey is still held.
func putFenced(ctx context.Context, c conn, check *api.KVTxnOp, lockKey, key string, value []byte) error {
	if err := validateKey(key); err != nil {
		return fmt.Errorf("%w: %q: %s", ErrInvalidKey, key, err)
	}
	if check.Session == notHeldSession {
		return fmt.Errorf("%w: %q is not held: fenced put %q refused", ErrLockLost, lockKey, key)
	}
	ops := api.KVTxnOps{check, {Verb: api.KVSet, Key: key, Value: value}}
	ok, resp, err := kvTxn(ctx, c, ops)
	switch {
	case err != nil:
		return fmt.Errorf("consullock: fenced put %q: %w", key, explain(err))
	case !ok && len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0:
		return fmt.Errorf("%w: %q: fenced put %q refused: %s", ErrLockLost, lockKey, key, resp.Errors[0].What)
	case !ok:
		return fmt.Errorf("consullock: fenced put %q: %v", key, resp.Errors)
	}
	return nil
}
