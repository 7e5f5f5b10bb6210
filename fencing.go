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
