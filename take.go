package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// takeSpec is one write that takes keys for a session: all of them or
// none, in one transaction, like python-consul-lock's PUT ?acquire but with
// the index of the write in Consul's answer: the fencing token, at no extra
// round trip.
type takeSpec struct {
	keys    []string
	value   []byte
	flags   uint64
	session string
	also    api.KVTxnOps // applied in the same transaction when the keys are taken
}

// takeResult is a take that Consul answered.
type takeResult struct {
	tokens  []uint64 // the fencing token of each key, when they were taken
	blocked int      // otherwise, the key that another session holds or a lock delay keeps
	delayed bool     // that key is kept by a lock delay, which no blocking query sees end
}

func (r takeResult) taken() bool { return r.tokens != nil }

// take tries once to take the keys of t, retrying passing failures until
// deadline. Retrying is safe: a session may take a key it already holds.
//
// The error wraps errSessionInvalid, ErrPermissionDenied, ErrConsul, or
// ctx's cause. maybe reports a failure that may hide a take that applied.
// When ctx ends while the write is in flight, take returns at once, and
// abandoned is called later with the tokens of the write if it applied
// after all (see writeDetached).
func take(ctx context.Context, c conn, t takeSpec, deadline time.Time, abandoned func([]uint64)) (res takeResult, maybe bool, err error) {
	ops := make(api.KVTxnOps, 0, len(t.keys)+len(t.also))
	for _, k := range t.keys {
		ops = append(ops, &api.KVTxnOp{Verb: api.KVLock, Key: k, Value: t.value, Flags: t.flags, Session: t.session})
	}
	ops = append(ops, t.also...)
	tokensOf := func(resp *api.KVTxnResponse) []uint64 {
		tokens := make([]uint64, len(t.keys))
		for i := range tokens {
			tokens[i] = resp.Results[i].ModifyIndex
		}
		return tokens
	}
	err = retry(ctx, deadline, func() error {
		type answer struct {
			ok   bool
			resp *api.KVTxnResponse
		}
		a, err := writeDetached(ctx, func(ctx context.Context) (answer, error) {
			ok, resp, err := kvTxn(ctx, c, ops)
			if err == nil && ok && len(resp.Results) < len(t.keys) {
				err = fmt.Errorf("%w: Consul's answer has %d results for %d keys", ErrConsul, len(resp.Results), len(t.keys))
			}
			return answer{ok, resp}, err
		}, func(a answer) {
			if a.ok && abandoned != nil {
				abandoned(tokensOf(a.resp))
			}
		})
		if err != nil {
			maybe = maybe || (ctx.Err() == nil && !unapplied(err))
			return err
		}
		if a.ok {
			res = takeResult{tokens: tokensOf(a.resp)}
			return nil
		}
		res, err = refusal(a.resp)
		return err
	})
	if err != nil {
		return takeResult{}, maybe, fmt.Errorf("take: %w", consulError(err))
	}
	return res, false, nil
}

// refusal reads a rolled-back take: a key held elsewhere or kept by a lock
// delay is an answer, anything else an error.
func refusal(resp *api.KVTxnResponse) (takeResult, error) {
	var res takeResult
	found := false
	for _, e := range resp.Errors {
		switch classifyTxnError(e.What) {
		case txnLockDelay:
			res, found = takeResult{blocked: e.OpIndex, delayed: true}, true
		case txnHeld:
			if !found {
				res, found = takeResult{blocked: e.OpIndex}, true
			}
		case txnNoSession:
			return takeResult{}, fmt.Errorf("%w: %s", errSessionInvalid, e.What)
		case txnDenied:
			return takeResult{}, fmt.Errorf("%w: %s", ErrPermissionDenied, e.What)
		default:
			return takeResult{}, fmt.Errorf("%w: %s", ErrConsul, e.What)
		}
	}
	if !found {
		return takeResult{}, fmt.Errorf("%w: transaction rolled back without a reason", ErrConsul)
	}
	return res, nil
}
