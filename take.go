package consullock

import (
	"context"
	"encoding/base64"
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

// maxTxnBytes is Consul's default cap on a transaction's request
// (limits.txn_max_req_len, 512 KiB). A take carries each key's value
// base64-encoded in one, so a value of more than about 384 KiB cannot be
// taken at all.
const maxTxnBytes = 512 * 1024

// checkValueSize refuses, before anything is written, a value that would
// make the take of n keys larger than a transaction Consul accepts (with
// room for the keys and the request's framing).
func checkValueSize(n, valueLen int) error {
	const perKey = 1024 // the key, the session, the operation's JSON
	if size := n * (base64.StdEncoding.EncodedLen(valueLen) + perKey); size > maxTxnBytes {
		return fmt.Errorf("%w: the lock's value (%d bytes, %d base64-encoded per key, %d keys) makes a take of %d bytes, over the %d that Consul accepts in a transaction (limits.txn_max_req_len)",
			ErrInvalidOption, valueLen, base64.StdEncoding.EncodedLen(valueLen), n, size, maxTxnBytes)
	}
	return nil
}

// takeResult is a take that Consul answered.
type takeResult struct {
	tokens  []uint64      // the fencing token of each key, when they were taken
	also    []*api.KVPair // then, the results of the operations applied with the take
	blocked int           // otherwise, the key that another session holds or a lock delay keeps
	delayed bool          // that key is kept by a lock delay, which no blocking query sees end
}

func (r takeResult) taken() bool { return r.tokens != nil }

// doubt is what a failed take leaves unknown: whether it applied.
type doubt struct {
	maybe bool        // the failure may hide a take that applied
	late  <-chan bool // a take abandoned in flight: whether it applied, once Consul answers
}

// applied waits until the fate of the take is known, at most cleanupTimeout,
// and reports whether it may have applied.
func (d doubt) applied() bool {
	if d.late != nil && <-d.late {
		return true
	}
	return d.maybe
}

func (d doubt) none() bool { return !d.maybe && d.late == nil }

// take tries once to take the keys of t, retrying passing failures until
// deadline. Retrying is safe: a session may take a key it already holds.
//
// The error wraps errSessionInvalid, ErrPermissionDenied, ErrConsul, or
// ctx's cause. When ctx ends while the write is in flight, take returns at
// once; the doubt of a failed take tells whether it may have applied all
// the same.
func take(ctx context.Context, c conn, t takeSpec, deadline time.Time) (res takeResult, d doubt, err error) {
	ops := make(api.KVTxnOps, 0, len(t.keys)+len(t.also))
	for _, k := range t.keys {
		ops = append(ops, &api.KVTxnOp{Verb: api.KVLock, Key: k, Value: t.value, Flags: t.flags, Session: t.session})
	}
	ops = append(ops, t.also...)
	type answer struct {
		ok   bool
		resp *api.KVTxnResponse
	}
	err = retry(ctx, deadline, func() error {
		a, abandoned, err := writeDetached(ctx, func(ctx context.Context) (answer, error) {
			ok, resp, err := kvTxn(ctx, c, ops)
			if err == nil && ok && len(resp.Results) < len(t.keys) {
				err = fmt.Errorf("%w: Consul's answer has %d results for %d keys", ErrConsul, len(resp.Results), len(t.keys))
			}
			return answer{ok, resp}, err
		})
		if abandoned != nil {
			applied := make(chan bool, 1)
			go func() {
				o := <-abandoned
				applied <- o.err == nil && o.v.ok || o.err != nil && !unapplied(o.err)
			}()
			d.late = applied
		}
		if err != nil {
			d.maybe = d.maybe || (abandoned == nil && !unapplied(err))
			return err
		}
		if a.ok {
			res = takeResult{tokens: make([]uint64, len(t.keys))}
			for i := range res.tokens {
				res.tokens[i] = a.resp.Results[i].ModifyIndex
			}
			res.also = a.resp.Results[len(t.keys):]
			return nil
		}
		res, err = refusal(a.resp)
		return err
	})
	if err != nil {
		return takeResult{}, d, fmt.Errorf("take: %w", consulError(err))
	}
	return res, doubt{}, nil
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
