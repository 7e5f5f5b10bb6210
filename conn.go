package consullock

import (
	"context"
	"runtime"
	"sync"
	"weak"

	"github.com/hashicorp/consul/api"
)

// conn is a Consul client with the ACL token a lock uses on every call.
type conn struct {
	c     *api.Client
	token string // "" uses the client's own token
}

// The requests of the library that do not block (all but the watches and
// the waits) in flight at once per client are bounded: the agent serves at
// most 200 connections per client address
// (limits.http_max_conns_per_client), and a burst of acquires must queue in
// the process rather than be refused with 429 there. A few slots are kept
// for the calls marked ahead, those that renew sessions, give keys back or
// leave a line: a burst of hundreds of acquires must not hold up the
// release that the acquires wait for, nor the renewal that keeps a lock
// from expiring. Other calls, acquires included, have the shared slots
// only, even when nothing is being given back.
const (
	maxCallsInFlight = 64
	keptSlots        = 16
)

// callSlots holds, per client, the slots that any call may take and those
// kept for the calls marked ahead. Its keys are weak, and an entry goes
// when its client does: a program may build a client for each piece of
// work, and the map must not keep them all alive.
var callSlots sync.Map // weak.Pointer[api.Client] -> *slots

type slots struct{ any, kept chan struct{} }

// slotsOf returns the slots of client c.
func slotsOf(c *api.Client) *slots {
	key := weak.Make(c)
	if v, ok := callSlots.Load(key); ok {
		return v.(*slots)
	}
	v, loaded := callSlots.LoadOrStore(key, &slots{
		any:  make(chan struct{}, maxCallsInFlight-keptSlots),
		kept: make(chan struct{}, keptSlots),
	})
	if !loaded {
		runtime.AddCleanup(c, func(key weak.Pointer[api.Client]) { callSlots.Delete(key) }, key)
	}
	return v.(*slots)
}

type aheadKey struct{}

// ahead marks the calls made with ctx as ones that keep or give back what
// is held: they may use the slots kept for them (see call). It is a mark
// on the calls rather than on the conn, whose value also names the
// client's shared watches.
func ahead(ctx context.Context) context.Context {
	return context.WithValue(ctx, aheadKey{}, true)
}

// call runs fn, a request that does not block, once one of the client's
// slots is free.
func (c conn) call(ctx context.Context, fn func() error) error {
	sl := slotsOf(c.c)
	isAhead, _ := ctx.Value(aheadKey{}).(bool)
	slot, err := sl.take(ctx, isAhead)
	if err != nil {
		return err
	}
	defer func() { <-slot }()
	return fn()
}

// take waits for a slot and returns the channel it came from. A call
// marked ahead takes a shared slot when one is free, so as to leave the
// kept ones for the next.
func (sl *slots) take(ctx context.Context, isAhead bool) (chan struct{}, error) {
	if isAhead {
		select {
		case sl.any <- struct{}{}:
			return sl.any, nil
		default:
		}
		select {
		case sl.any <- struct{}{}:
			return sl.any, nil
		case sl.kept <- struct{}{}:
			return sl.kept, nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	select {
	case sl.any <- struct{}{}:
		return sl.any, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (c conn) write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{Token: c.token}).WithContext(ctx)
}

func (c conn) query(ctx context.Context, q api.QueryOptions) *api.QueryOptions {
	q.Token = c.token
	return q.WithContext(ctx)
}
