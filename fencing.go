package consullock

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// takeKey tries once to take key for session, storing value, and returns
// the fencing token of the hold, or 0 when another session holds the key or
// a lock delay is in force.
//
// It is one consensus write, like python-consul-lock's PUT ?acquire, but as
// a transaction so that Consul answers with the index of the write: the
// fencing token, at no extra round trip.
func takeKey(ctx context.Context, c *api.Client, key string, value []byte, session string) (uint64, error) {
	ops := api.KVTxnOps{{Verb: api.KVLock, Key: key, Value: value, Session: session}}
	ok, resp, _, err := c.KV().Txn(ops, queryOpts(ctx, api.QueryOptions{}))
	switch {
	case err != nil:
		return 0, fmt.Errorf("acquire key: %w", err)
	case ok && len(resp.Results) == 1 && resp.Results[0].ModifyIndex != 0:
		return resp.Results[0].ModifyIndex, nil
	case ok:
		return 0, fmt.Errorf("acquire key: Consul's answer has no index")
	}
	for _, e := range resp.Errors {
		// Consul's words (agent/consul/txn_endpoint.go, state/txn.go) for a
		// key that another session holds or that a lock delay keeps.
		if !strings.Contains(e.What, "lock is already held") && !strings.Contains(e.What, "due to lock delay") {
			return 0, fmt.Errorf("acquire key: %s", e.What)
		}
	}
	return 0, nil
}

// CheckOp returns a transaction operation that fails unless this lock's
// session still holds its key: put it first in a Consul transaction
// (api.KV.Txn or api.Txn.Txn) and the rest of the transaction applies only
// while the lock is held, like etcd's Mutex.IsOwner. On a lock not held, the
// operation checks for an empty session and always fails.
func (l *EphemeralLock) CheckOp() *api.KVTxnOp {
	return &api.KVTxnOp{Verb: api.KVCheckSession, Key: l.key, Session: l.Session()}
}

// PutFenced writes value under key in one consensus write that applies only
// if this lock still holds its key at that moment, so a holder that lost the
// lock without noticing cannot overwrite what its successor wrote. When the
// lock is not held, nothing is written and the error wraps ErrLockLost.
//
// A resource outside Consul gets the same protection from Token: store the
// highest token seen with the data and refuse writes that carry a lower one.
func (l *EphemeralLock) PutFenced(ctx context.Context, key string, value []byte) error {
	if err := validateKey(key); err != nil {
		return fmt.Errorf("%w: %q: %s", ErrInvalidKey, key, err)
	}
	ops := api.KVTxnOps{l.CheckOp(), {Verb: api.KVSet, Key: key, Value: value}}
	ok, resp, _, err := l.cfg.Client.KV().Txn(ops, queryOpts(ctx, api.QueryOptions{}))
	switch {
	case err != nil:
		return fmt.Errorf("consullock: fenced put %q: %w", key, err)
	case !ok && len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0:
		return fmt.Errorf("%w: %q: fenced put %q refused: %s", ErrLockLost, l.key, key, resp.Errors[0].What)
	case !ok:
		return fmt.Errorf("consullock: fenced put %q: %v", key, resp.Errors)
	}
	return nil
}
