package consullock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// kvTxn runs a KV transaction. It writes the request itself because
// consul/api's Txn reports a failed request without its status code, which
// is what tells a passing failure (502, 503, 504) from a permanent one.
// A transaction that Consul rolled back is (false, its errors, nil).
func kvTxn(ctx context.Context, c conn, ops api.KVTxnOps) (bool, *api.KVTxnResponse, error) {
	txn := make(api.TxnOps, len(ops))
	for i, op := range ops {
		txn[i] = &api.TxnOp{KV: op}
	}
	var out api.TxnResponse
	_, err := c.c.Raw().Write("/v1/txn", txn, &out, c.write(ctx))
	var status api.StatusError
	switch {
	case errors.As(err, &status) && status.Code == 409:
		if jerr := json.Unmarshal([]byte(status.Body), &out); jerr != nil {
			return false, nil, fmt.Errorf("decode rolled-back transaction: %w", jerr)
		}
		return false, kvResults(&out), nil
	case err != nil:
		return false, nil, err
	}
	return true, kvResults(&out), nil
}

// kvTxnDetached is kvTxn run by writeDetached: it returns when ctx ends, and
// a transaction that applied all the same is then passed to abandoned, if
// not nil, with its results.
func kvTxnDetached(ctx context.Context, c conn, ops api.KVTxnOps, abandoned func([]*api.KVPair)) (bool, *api.KVTxnResponse, error) {
	type answer struct {
		ok   bool
		resp *api.KVTxnResponse
	}
	a, err := writeDetached(ctx, func(ctx context.Context) (answer, error) {
		ok, resp, err := kvTxn(ctx, c, ops)
		return answer{ok, resp}, err
	}, func(a answer) {
		if a.ok && abandoned != nil {
			abandoned(a.resp.Results)
		}
	})
	return a.ok, a.resp, err
}

func kvResults(r *api.TxnResponse) *api.KVTxnResponse {
	kv := &api.KVTxnResponse{Errors: r.Errors}
	for _, res := range r.Results {
		kv.Results = append(kv.Results, res.KV)
	}
	return kv
}
