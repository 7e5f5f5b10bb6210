package consullock

import (
	"bytes"
	"context"
	"iter"
	"math"

	"github.com/hashicorp/consul/api"
)

// Election elects one leader among the candidates that campaign under one
// name: the leader is the holder of a renewed lock, which it keeps until it
// resigns, dies or loses it. Anyone can observe who leads.
type Election struct {
	s    settings
	key  string
	conn conn
}

// Leader is what observers see of a leader: the value it campaigned with
// (its address, say), its session, and its term's fencing token.
type Leader struct {
	Value   []byte
	Session string
	Token   uint64
}

// NewElection builds an election on the key that the KeyPattern makes of
// name. LockTimeout is how soon a leader that died is replaced (the TTL of
// its session, renewed while it leads). WithAcquireTimeout and WithValue do
// not apply: Campaign waits until its context ends, and stores the value it
// is given. It validates everything and talks to no one.
func NewElection(name string, opts ...Option) (*Election, error) {
	s, err := newSettings(forElection, opts)
	if err != nil {
		return nil, wrapOp("NewElection", name, err)
	}
	key, err := s.keyOf(name)
	if err != nil {
		return nil, wrapOp("NewElection", name, err)
	}
	return &Election{s: s, key: key, conn: s.conn()}, nil
}

// Term is one candidate's leadership, from Campaign's return until Resign
// or a loss. It is an EphemeralLock's hold, renewed until Resign.
type Term struct{ lock *EphemeralLock }

// Campaign waits until this candidate leads, or ctx ends, and returns its
// term. value is what observers see of this leader. A term's Lost channel
// tells its leader that it no longer leads: it must stop acting as leader
// then.
func (e *Election) Campaign(ctx context.Context, value []byte) (*Term, error) {
	s := e.s
	s.renew = true
	s.AcquireTimeout = math.MaxInt64 // until ctx ends
	v := bytes.Clone(value)
	s.Value = func() []byte { return v }
	lock := &EphemeralLock{s: s, key: e.key, conn: e.conn, lost: make(chan struct{})}
	if err := lock.Acquire(ctx); err != nil {
		return nil, wrapOp("campaign", e.key, err)
	}
	return &Term{lock}, nil
}

// Lost returns a channel closed when the term ends: resigned or lost.
func (t *Term) Lost() <-chan struct{} { return t.lock.Lost() }

// Err tells why the term was lost (wrapping ErrLockLost), or nil.
func (t *Term) Err() error { return t.lock.Err() }

// Session is the ID of the session that holds the term's lock.
func (t *Term) Session() string { return t.lock.Session() }

// Token is the term's fencing token: later terms have larger ones.
func (t *Term) Token() uint64 { return t.lock.Token() }

// Resign ends the term at once, so another candidate can lead.
func (t *Term) Resign(ctx context.Context) error { return t.lock.Release(ctx) }

// Leader returns the current leader, or an error wrapping ErrNoLeader.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	var pair *api.KVPair
	err := e.conn.call(ctx, func() (err error) {
		pair, _, err = e.conn.c.KV().Get(e.key, e.conn.query(ctx, api.QueryOptions{RequireConsistent: true}))
		return err
	})
	if err != nil {
		return Leader{}, wrapOp("leader", e.key, consulError(err))
	}
	if pair == nil || pair.Session == "" {
		return Leader{}, wrapOp("leader", e.key, ErrNoLeader)
	}
	return leaderOf(pair), nil
}

func leaderOf(pair *api.KVPair) Leader {
	if pair == nil || pair.Session == "" {
		return Leader{}
	}
	return Leader{Value: pair.Value, Session: pair.Session, Token: pair.ModifyIndex}
}

// Observe yields the leader each time it changes, and the zero Leader while
// there is none, on blocking queries, until ctx ends or the loop stops. The
// first is the leader at the time of the call. Passing failures are retried;
// a failure that does not pass (a token that may not read the key) is
// yielded with the zero Leader, and ends it. A loop body that is slow sees
// the latest leader next, not every one in between.
func (e *Election) Observe(ctx context.Context) iter.Seq2[Leader, error] {
	return func(yield func(Leader, error) bool) {
		var index uint64
		var last *Leader
		var b backoff
		for {
			pair, meta, err := e.conn.c.KV().Get(e.key, e.conn.query(ctx, api.QueryOptions{WaitIndex: index, WaitTime: maxBlockingWait}))
			switch {
			case ctx.Err() != nil:
				return
			case transient(err):
				if sleep(ctx, b.step()) != nil {
					return
				}
				continue
			case err != nil:
				yield(Leader{}, wrapOp("observe", e.key, consulError(err)))
				return
			}
			b, index = backoff{}, nextIndex(index, meta.LastIndex)
			cur := leaderOf(pair)
			if last != nil && last.Session == cur.Session && last.Token == cur.Token {
				continue
			}
			last = &cur
			if !yield(cur, nil) {
				return
			}
		}
	}
}
