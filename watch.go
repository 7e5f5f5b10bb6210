package consullock

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"
)

// watchHeld follows a held key with consistent blocking queries, from the
// index of the write that took it, until ctx ends or the hold ends (done is
// closed). It calls lost once, with the reason, when the key is gone or
// another session holds it, or, when strict (the session is shared with
// other holders), when the key was written to since it was taken, in which
// case stillHeld is true: the session still holds the key. Then it returns. Errors are retried: the
// holder's local deadline, not this watch, bounds how long Consul's silence
// is trusted.
//
// A release deletes the key, which ends the watch's blocking query by itself;
// cancelling it instead would cost its connection.
func watchHeld(ctx context.Context, c conn, key, session string, token uint64, strict bool, done <-chan struct{}, lost func(reason string, stillHeld bool)) {
	index := token
	var b backoff
	for {
		select {
		case <-done:
			return
		default:
		}
		pair, meta, err := c.c.KV().Get(key, c.query(ctx, api.QueryOptions{
			WaitIndex:         index,
			RequireConsistent: true,
		}))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			t := time.NewTimer(b.step())
			select { // a released hold ends the watch at once, even here
			case <-t.C:
			case <-ctx.Done():
			case <-done:
			}
			t.Stop()
			continue
		case pair == nil:
			lost("its key was deleted", false)
			return
		case pair.Session != session:
			lost("its key is held by session "+pair.Session, false)
			return
		case strict && pair.ModifyIndex != token:
			lost("its key was written to since it was taken", true)
			return
		}
		index, b = nextIndex(index, meta.LastIndex), backoff{}
	}
}

// renewEvery renews session, half a TTL before each local deadline, until
// ctx ends. Each renewal is retried until expires, the local deadline, which
// moves on with every renewal Consul confirms: renewed is called with the new
// deadline. gone is called when Consul no longer knows the session; when the
// deadline passes unconfirmed, renewEvery returns and the caller's timer
// reports the loss.
func renewEvery(ctx context.Context, c conn, session string, ttl time.Duration, expires time.Time, o Observer,
	renewed func(expires time.Time), gone func()) {
	for sleep(ctx, time.Until(expires.Add(-ttl/2))) == nil {
		sent := time.Now()
		switch err := renewSession(ctx, c, session, expires, o); {
		case ctx.Err() != nil:
			return
		case err == errSessionGone:
			gone()
			return
		case err != nil:
			return
		}
		expires = holdExpiry(sent, ttl)
		renewed(expires)
	}
}
