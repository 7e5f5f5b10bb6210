package consullock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// Election elects one leader among the candidates that campaign under one
// name: the leader is the holder of a renewed lock, which it keeps until it
// resigns, dies or loses it. Anyone can observe who leads.
type Election struct {
	cfg  Config
	name string
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
// name. The options are those of NewEphemeralLock; LockTimeout is how soon a
// leader that died is replaced (its session's TTL, renewed while it leads).
// It validates everything and talks to no one.
func NewElection(name string, opts ...Option) (*Election, error) {
	cfg, key, err := newKeyConfig(name, opts)
	if err != nil {
		return nil, err
	}
	return &Election{cfg: cfg, name: name, key: key, conn: conn{cfg.Client, cfg.Token}}, nil
}

// Term is one candidate's leadership, from Campaign's return until Resign
// or a loss.
type Term struct{ lock *EphemeralLock }

// Campaign waits until this candidate leads, or ctx ends, and returns its
// term. value is what observers see of this leader. A term's Lost channel
// tells its leader that it no longer leads: it must stop acting as leader
// then.
func (e *Election) Campaign(ctx context.Context, value []byte) (*Term, error) {
	opts := []Option{
		func(c *Config) { *c = e.cfg },
		WithRenewal(),
		WithAcquireTimeout(time.Duration(1<<63 - 1)), // until ctx ends
		WithValue(func() []byte { return value }),
	}
	lock, err := NewEphemeralLock(e.name, opts...)
	if err != nil {
		return nil, err
	}
	if err := lock.Acquire(ctx); err != nil {
		return nil, fmt.Errorf("consullock: campaign for %q: %w", e.key, err)
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

// ErrNoLeader reports an election that has no leader now.
var ErrNoLeader = errors.New("consullock: no leader")

// Leader returns the current leader, or an error wrapping ErrNoLeader.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	pair, _, err := e.conn.c.KV().Get(e.key, e.conn.query(ctx, api.QueryOptions{RequireConsistent: true}))
	if err != nil {
		return Leader{}, fmt.Errorf("consullock: leader of %q: %w", e.key, explain(err))
	}
	if pair == nil || pair.Session == "" {
		return Leader{}, fmt.Errorf("%w: %q", ErrNoLeader, e.key)
	}
	return Leader{Value: pair.Value, Session: pair.Session, Token: pair.ModifyIndex}, nil
}

// Observe sends the leader each time it changes, and the zero Leader while
// there is none, on blocking queries, until ctx ends; then it closes the
// channel. The first value is the leader at the time of the call. Passing
// failures are retried; an observer that falls behind sees the latest leader.
func (e *Election) Observe(ctx context.Context) <-chan Leader {
	ch := make(chan Leader, 1)
	go func() {
		defer close(ch)
		var index uint64
		var last *Leader
		var b backoff
		for {
			pair, meta, err := e.conn.c.KV().Get(e.key, e.conn.query(ctx, api.QueryOptions{WaitIndex: index}))
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if sleep(ctx, b.step()) != nil {
					return
				}
				continue
			}
			b, index = backoff{}, nextIndex(index, meta.LastIndex)
			cur := Leader{}
			if pair != nil && pair.Session != "" {
				cur = Leader{Value: pair.Value, Session: pair.Session, Token: pair.ModifyIndex}
			}
			if last != nil && last.Session == cur.Session && last.Token == cur.Token {
				continue
			}
			last = &cur
			select { // keep only the latest for a slow observer
			case <-ch:
			default:
			}
			select {
			case ch <- cur:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}
