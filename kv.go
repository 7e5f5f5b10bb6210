package consullock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

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
	err := c.call(ctx, func() error {
		_, err := c.c.Raw().Write("/v1/txn", txn, &out, c.write(ctx))
		return err
	})
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

func kvResults(r *api.TxnResponse) *api.KVTxnResponse {
	kv := &api.KVTxnResponse{Errors: r.Errors}
	for _, res := range r.Results {
		kv.Results = append(kv.Results, res.KV)
	}
	return kv
}

// txnError is the first error of a rolled-back transaction, as an error.
func txnError(resp *api.KVTxnResponse) error {
	if resp == nil || len(resp.Errors) == 0 {
		return errors.New("transaction rolled back without a reason")
	}
	return errors.New(resp.Errors[0].What)
}

// deleteIfUnchanged deletes key only if its ModifyIndex is still token: the
// write that took it is the last one. A key already gone counts as deleted.
// It reports whether the key is gone now.
func deleteIfUnchanged(ctx context.Context, c conn, key string, token uint64) (bool, error) {
	ctx = ahead(ctx)
	var deleted bool
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() (err error) {
		return c.call(ctx, func() (err error) {
			deleted, _, err = c.c.KV().DeleteCAS(&api.KVPair{Key: key, ModifyIndex: token}, c.write(ctx))
			return err
		})
	})
	if err != nil {
		return false, fmt.Errorf("delete key: %w", consulError(err))
	}
	return deleted, nil
}

// deleteIfHeld deletes key in one transaction that applies only while
// session holds it. A key no longer held by session is left alone.
func deleteIfHeld(ctx context.Context, c conn, key, session string) error {
	ctx = ahead(ctx)
	ops := api.KVTxnOps{
		{Verb: api.KVCheckSession, Key: key, Session: session},
		{Verb: api.KVDelete, Key: key},
	}
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		ok, resp, err := kvTxn(ctx, c, ops)
		if err == nil && !ok && classifyTxnError(txnError(resp).Error()) != txnCheckFailed {
			err = txnError(resp)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete key: %w", consulError(err))
	}
	return nil
}

// giveBackTaken deletes each of keys that s holds, after a take with s that
// failed or was abandoned but may have applied.
func giveBackTaken(c conn, s *session, keys []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, key := range keys {
		if err := deleteIfHeld(ctx, c, key, s.id); err != nil {
			return fmt.Errorf("could not give back %q after a failed acquire: %w", key, err)
		}
	}
	return nil
}

// giveBackKey deletes a key taken at token by session: one DELETE
// ?cas=token, which applies only if the key is still as the taking write
// left it (and which Consul serves faster than a transaction). If the key
// changed since while session still holds it, it is deleted all the same:
// the caller knows that no other holder shares the key through session. A
// key already gone counts as given back.
func giveBackKey(ctx context.Context, c conn, key, session string, token uint64) error {
	deleted, err := deleteIfUnchanged(ctx, c, key, token)
	if err != nil || deleted {
		return err
	}
	return deleteIfHeld(ctx, c, key, session)
}

// readKey reads key at once, retrying passing failures for cleanupTimeout.
func readKey(ctx context.Context, c conn, key string) (*api.KVPair, error) {
	var pair *api.KVPair
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		return c.call(ctx, func() (err error) {
			pair, _, err = c.c.KV().Get(key, c.query(ctx, api.QueryOptions{RequireConsistent: true}))
			return err
		})
	})
	if err != nil {
		return nil, consulError(err)
	}
	return pair, nil
}
