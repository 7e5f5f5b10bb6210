package consullock

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Waiting in line, and handing the key over. A waiter that finds the key
// held enqueues a contender key, KEY.queue/<session>-00000000, held by its
// session (so that it vanishes with a dead process) and carrying the value
// and flags it would take the key with. A holder that gives the key back
// while contenders wait hands it to the first of them instead, in one
// transaction that checks the holder's token and that the contender key is
// as seen (the end of its session would have changed it), gives the key
// to that session with that value, and deletes the contender key. The successor
// learns that it holds the key from the watch it waits on, without a write
// of its own: a handoff costs one consensus write on the critical path, as
// with etcd's Mutex, and waiters of all processes are served in arrival
// order. When the key is free and nobody handed it on (the holder did not
// see the queue yet, or was lost, or was a python-consul-lock holder), the
// first contender takes it itself.

const queueSep = ".queue/"

func queuePrefix(key string) string { return key + queueSep }

// contenderKey is the contender key of session for key. It is the same at
// each of the session's turns in line: Consul keeps a tombstone of each
// deleted key for 15 minutes (tombstone_ttl), and every list of the key
// and its line reads them all, so a name per turn made a busy lock slower
// by the minute (4 processes with no hold on a dev agent: 1,012 cycles in
// the first 5 s, 814 in the sixth). One session has at most one turn in a
// key's line at a time: a Locker's goroutines take local turns, and an
// EphemeralLock acquires once. The 8 digits, random in earlier versions,
// keep the shape that readers of the line know.
func contenderKey(key, session string) string {
	return queuePrefix(key) + session + "-00000000"
}

// contender is a live contender key, as a list of the lock key shows it.
type contender struct {
	key     string
	session string
	create  uint64 // its CreateIndex: the arrival order
	index   uint64 // its ModifyIndex
	value   []byte
	flags   uint64
}

// contendersIn returns the live contenders among pairs, by lock key, in
// arrival order. A contender key is KEY.queue/<session>-<8 digits> held by that
// session: a user's lock whose name merely contains ".queue/" is none.
func contendersIn(pairs api.KVPairs) map[string][]contender {
	var m map[string][]contender
	for _, p := range pairs {
		i := strings.LastIndex(p.Key, queueSep)
		if i < 0 || p.Session == "" || !strings.HasPrefix(p.Key[i+len(queueSep):], p.Session+"-") {
			continue
		}
		if m == nil {
			m = map[string][]contender{}
		}
		lock := p.Key[:i]
		m[lock] = append(m[lock], contender{key: p.Key, session: p.Session, create: p.CreateIndex, index: p.ModifyIndex, value: p.Value, flags: p.Flags})
	}
	for _, q := range m {
		slices.SortFunc(q, func(a, b contender) int { return cmp.Compare(a.create, b.create) })
	}
	return m
}

// isContenderKey reports whether key has the shape of a contender key.
func isContenderKey(key string) bool {
	i := strings.LastIndex(key, queueSep)
	const sessionID, sep, nonceHex = 36, 1, 8
	return i >= 0 && len(key)-i-len(queueSep) == sessionID+sep+nonceHex
}

// queuePlace says who heads queue q, and whether contender key me is in it.
func queuePlace(q []contender, me string) (head string, queued bool) {
	if len(q) > 0 {
		head = q[0].key
	}
	return head, slices.ContainsFunc(q, func(c contender) bool { return c.key == me })
}

// place is one acquire's place in the queue of its key.
type place struct {
	a       *attempt
	key     string
	me      string      // the contender key, while enqueued
	by      *session    // the session that holds it
	at      uint64      // the index of the enqueue
	st      keyState    // the key and the queue as last seen
	holder  *api.KVPair // the key as last seen held by another, for messages
	blocked bool        // a take found the key held: wait in line
	crowded bool        // this process saw others want the key a moment ago
	known   uint64      // the index at which q.st was seen
	ahead   []contender // the contenders ahead, in order, as last listed
	behind  []contender // the contenders behind, in order, as last listed
	sub     *subscription
	news    *news
}

// queueFor makes a's acquire of its one key wait in line when the key is
// held, and take it with a handoff.
func queueFor(a *attempt) {
	q := &place{a: a, key: a.keys[0]}
	a.q = q
	a.also = func(s *session) api.KVTxnOps {
		switch {
		case q.me != "" && q.by == s: // the take leaves the line, and reads who waits behind
			return api.KVTxnOps{{Verb: api.KVDelete, Key: q.me}, {Verb: api.KVGetTree, Key: q.key}}
		case q.crowded: // the take reads the line, for the release to hand the key on
			return api.KVTxnOps{{Verb: api.KVGetTree, Key: q.key}}
		}
		return nil // no sign of others: the take costs what a take costs
	}
}

// took records a take by s at token, and the queue it read: the holder
// hands the key to the first in it, unless a watch saw a newer queue. It
// reports whether others were waiting or this acquire waited: a hold that
// knows of nobody next is then watched at once, so that its release sees
// who came meanwhile.
func (q *place) took(s *session, token uint64, also api.KVPairs) (queue []contender, contended bool) {
	queue = contendersIn(also)[q.key]
	noteQueue(q.a.conn, q.key, keyState{exists: true, session: s.id, index: token}, queue, token)
	q.me = "" // the take deleted the contender key
	return queue, len(queue) > 0 || q.at != 0
}

// inLine reports whether the acquire should wait in line rather than take:
// it is in line already, a take found the key held, or this process saw the
// key held by another session, or others waiting for it, a moment ago.
// With no time left to wait, a take is always tried once.
func (q *place) inLine() bool {
	if q.me != "" || q.blocked {
		return true
	}
	if !time.Now().Before(q.a.deadline) {
		return false
	}
	h := hubOf(q.a.conn)
	if h == nil {
		return false
	}
	st, waiting, ok := h.holderOf(q.key)
	q.crowded = ok && (waiting || !st.free())
	switch {
	case !ok:
		return false
	case !st.free():
		return st.session != q.a.ownSession() // a key kept for this acquire is taken
	}
	return waiting
}

// wait waits in line until the key is handed to this waiter (its token),
// or is free with this waiter first in line, or held by this waiter's own
// session, which may take it (token 0). Its watch goes on until settled,
// so that the hold's watch finds the watch's query running and its answer.
func (q *place) wait(ctx context.Context) (*session, uint64, error) {
	for {
		if q.me != "" && q.by.Err() != nil { // ended here: a handoff to it would be wasted
			q.leave()
		}
		switch {
		case q.me == "":
			if err := q.enqueue(ctx); err != nil {
				return nil, 0, err
			}
		case q.blocked: // a take found the key held since q.st was seen
			q.blocked = false
			if err := q.refresh(ctx, true); err != nil {
				return nil, 0, err
			}
		}
		st := q.st
		switch {
		case st.exists && st.session == q.by.id && st.index > q.at:
			q.me = "" // the handoff deleted the contender key
			return q.by, st.index, nil
		case st.exists && st.session == q.by.id, st.free() && st.head == q.me:
			return q.by, 0, nil
		case !st.queued: // the session was invalidated, or someone deleted the key
			q.me = ""
			continue
		}
		if err := q.next(ctx); err != nil {
			return nil, 0, err
		}
	}
}

// next waits for what may change the waiter's place: the key and its queue
// at the head of the line; behind, only the contender just ahead, so that a
// change of the key wakes the head alone, not every waiter.
func (q *place) next(ctx context.Context) error {
	if q.st.head == q.me || len(q.ahead) == 0 {
		return q.nextAtHead(ctx)
	}
	q.unwatch()
	if len(q.ahead) > watchedPlaces {
		// Far back: hold no query (see watchedPlaces), and read from time
		// to time whether the contender watchedPlaces ahead is still there.
		if err := q.farBehind(ctx, q.ahead[len(q.ahead)-watchedPlaces]); err != nil {
			return err
		}
		return q.refresh(ctx, false)
	}
	pred := q.ahead[len(q.ahead)-1]
	if err := q.await(ctx, watchKey(q.a.conn, pred.key, keyState{exists: true, session: pred.session, index: pred.index}, true, true, q.tell())); err != nil {
		return err
	}
	q.unwatch()
	return q.refresh(ctx, false)
}

// watchedPlaces is how many waiters behind the head watch the contender
// ahead of them with a query of their own. The agent serves at most 200
// connections per client address (limits.http_max_conns_per_client), and
// a host may run more waiters than that in processes of their own: those
// farther back hold none, and read now and then whether the contender
// watchedPlaces ahead of them is gone, which brings them near.
const (
	watchedPlaces = 96
	farPoll       = time.Second
)

// farBehind waits until contender c, far ahead in the line, is gone or has
// changed, reading it every farPoll or so, until ctx ends or the deadline.
func (q *place) farBehind(ctx context.Context, c contender) error {
	for {
		if !time.Now().Before(q.a.deadline) {
			return notAcquiredError(q.holder, q.a.timeout)
		}
		pause := farPoll/2 + rand.N(farPoll)
		if err := sleep(ctx, min(pause, time.Until(q.a.deadline))); err != nil {
			return err
		}
		var pair *api.KVPair
		conn := q.a.conn
		err := retry(ctx, q.a.deadline, func() error {
			return conn.call(ctx, func() (err error) {
				pair, _, err = conn.c.KV().Get(c.key, conn.query(ctx, api.QueryOptions{}))
				return err
			})
		})
		switch {
		case err != nil && ctx.Err() != nil:
			return context.Cause(ctx)
		case err != nil:
			return consulError(err)
		case pair == nil || pair.Session != c.session || pair.ModifyIndex != c.index:
			return nil
		}
	}
}

// enqueue puts a contender key in the queue with a live session, in one
// write that also reads the key and its queue as of that write.
func (q *place) enqueue(ctx context.Context) error {
	q.unwatch()
	var me string
	s, res, err := q.a.write(ctx, func(s *session) takeSpec {
		me = contenderKey(q.key, s.id)
		return takeSpec{keys: []string{me}, flags: q.a.flags, session: s.id,
			also: api.KVTxnOps{{Verb: api.KVGetTree, Key: q.key}}}
	}, func(s *session) { q.leaveWith(me, s) })
	switch {
	case err != nil:
		return fmt.Errorf("enqueue: %w", err)
	case !res.taken():
		return fmt.Errorf("%w: enqueue: a new contender key was refused", ErrConsul)
	}
	q.me, q.by, q.at, q.known, q.blocked = me, s, res.tokens[0], res.tokens[0], false
	q.saw(stateIn(res.also, &subscription{key: q.key, contender: me}), res.also)
	return nil
}

// saw records a state of the key and its queue, and tells the Observer of a
// new holder. pairs, when known, give the holder's value for messages.
func (q *place) saw(st keyState, pairs api.KVPairs) {
	if !st.free() && st.session != q.by.id && (q.holder == nil || q.holder.Session != st.session) {
		q.holder = &api.KVPair{Key: q.key, Session: st.session, ModifyIndex: st.index}
		if hook := contended(q.a.obs, q.key); hook != nil {
			hook(st.session)
		}
	}
	for _, p := range pairs {
		if p.Key == q.key && p.Session == st.session {
			q.holder = p
		}
	}
	if pairs != nil {
		// By arrival, not by finding the contender key: a handoff to this
		// waiter deleted it, and all in the line are then behind.
		line := contendersIn(pairs)[q.key]
		i := slices.IndexFunc(line, func(c contender) bool { return c.create >= q.at })
		if i < 0 {
			i = len(line)
		}
		q.ahead = append(q.ahead[:0], line[:i]...)
		if i < len(line) && line[i].key == q.me {
			i++
		}
		q.behind = slices.Clone(line[i:])
	}
	q.st = st
	note(q.a.conn, q.key, keyState{exists: st.exists, session: st.session, index: st.index})
}

// nextAtHead waits for the watch to see the key or the queue change. A
// head that knows who comes after it watches the key alone: the handoff
// it waits for is a change of the key, and at its release it hands the
// key to the one it knows. One that knows of nobody also hears of the
// arrivals behind it, so that it hands the key on rather than free it.
func (q *place) nextAtHead(ctx context.Context) error {
	if q.sub == nil || q.sub.contender == "" {
		q.unwatch()
		q.sub = watchQueue(q.a.conn, q.key, q.me, q.by.id, q.known, q.st, len(q.behind) > 0, q.tell())
	}
	prev := q.st
	if err := q.await(ctx, q.sub); err != nil {
		return err
	}
	st := q.news.take()
	q.saw(st, nil)
	if q.sub.keyOnly && passedOver(prev, st, q.by.id) {
		return q.refresh(ctx, false)
	}
	return nil
}

// passedOver reports that the key went to another session than the one
// that held it and this waiter's, which a watch of the key alone cannot
// place: the waiter may have left the line (its session ended, and its
// contender key with it, so the holder handed the key past it), or a
// taker that was not in line came first. A read of the line tells which.
func passedOver(prev, now keyState, self string) bool {
	return now.exists && now.session != "" && now.session != self && now.session != prev.session
}

// tell makes a fresh news for the next watch, and returns its callback.
func (q *place) tell() func(keyState) {
	q.news = &news{ready: make(chan struct{}, 1)}
	return q.news.tell
}

// await waits for sub's news, until ctx ends or the deadline passes.
func (q *place) await(ctx context.Context, sub *subscription) error {
	q.sub = sub
	timer := time.NewTimer(time.Until(q.a.deadline))
	defer timer.Stop()
	select {
	case <-q.news.ready:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-timer.C:
		return notAcquiredError(q.holder, q.a.timeout)
	}
}

// news keeps the newest state a watch told of, for a waiter: the watch's
// callback must never block.
type news struct {
	mu    sync.Mutex
	st    keyState
	ready chan struct{}
}

func (n *news) tell(st keyState) {
	n.mu.Lock()
	n.st = st
	n.mu.Unlock()
	select {
	case n.ready <- struct{}{}:
	default:
	}
}

func (n *news) take() keyState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}

// refresh reads the key and its queue at once. After a take found the key
// held, the read is consistent: the watch's last answer may be older than
// the take, and a stale read could show the key free again, for a take
// that fails again. After a watch saw the line move, a default read will
// do: the watch that follows, from its index, tells what is newer. A
// consistent read costs the servers a round of heartbeats, once a cycle.
//
// A default read older than what the waiter knew (a deposed leader's, in
// an election) is read again consistently: it may not show the waiter's
// own contender key, which the waiter would take for having left the line,
// and its next enqueue would put it behind those it came before.
func (q *place) refresh(ctx context.Context, consistent bool) error {
	pairs, index, err := q.readLine(ctx, consistent)
	if err == nil && olderThanKnown(consistent, index, q.known) {
		pairs, index, err = q.readLine(ctx, true)
	}
	if err != nil {
		return err
	}
	q.unwatch()
	q.known = index
	q.saw(stateIn(pairs, &subscription{key: q.key, contender: q.me}), pairs)
	return nil
}

// readLine lists the key and its queue once, with its index.
func (q *place) readLine(ctx context.Context, consistent bool) (api.KVPairs, uint64, error) {
	var pairs api.KVPairs
	var meta *api.QueryMeta
	c := q.a.conn
	err := retry(ctx, q.a.deadline, func() error {
		return c.call(ctx, func() (err error) {
			pairs, meta, err = c.c.KV().List(q.key, c.query(ctx, api.QueryOptions{RequireConsistent: consistent}))
			return err
		})
	})
	if err != nil {
		return nil, 0, consulError(err)
	}
	return pairs, meta.LastIndex, nil
}

// olderThanKnown reports whether a read at index cannot be trusted, being
// a default read older than the index known. (A consistent read can go
// back too, when Consul reaps old tombstones: it is the truth anyway.)
func olderThanKnown(consistent bool, index, known uint64) bool {
	return !consistent && index < known
}

func (q *place) unwatch() {
	if q.sub != nil {
		q.sub.cancel()
		q.sub = nil
	}
}

// leave takes the waiter out of the line after a failed acquire, before
// the acquire returns: see leaveWith. It runs with the key's local turn
// held, if any.
func (q *place) leave() {
	q.unwatch()
	if q.me != "" {
		me, s := q.me, q.by
		q.me = ""
		q.leaveWith(me, s)
	}
}

// leaveWith deletes the contender key me of session s, after which no
// holder can hand the key to s any more: usually one round trip. If the
// contender key was gone already, a holder may have handed the key to s,
// which passes it on. What cannot be done ends s, whose end frees all.
func (q *place) leaveWith(me string, s *session) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	left, err := deleteContender(ctx, q.a.conn, me, s.id)
	if err == nil && !left {
		var pair *api.KVPair
		pair, err = readKey(ahead(ctx), q.a.conn, q.key) // it may pass on a key handed to s
		if err == nil && pair != nil && pair.Session == s.id {
			err = giveOn(ctx, q.a.conn, q.key, s.id, pair.ModifyIndex, nil, true)
		}
	}
	if err != nil {
		s.abandon(fmt.Errorf("%w: could not leave the queue of %q: %w", ErrLockLost, q.key, err))
	}
}

// deleteContender deletes contender key me while session holds it, and
// reports whether it did: false when it was gone already.
func deleteContender(ctx context.Context, c conn, me, session string) (bool, error) {
	ctx = ahead(ctx)
	ops := api.KVTxnOps{
		{Verb: api.KVCheckSession, Key: me, Session: session},
		{Verb: api.KVDelete, Key: me},
	}
	var deleted bool
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		ok, resp, err := kvTxn(ctx, c, ops)
		switch {
		case err != nil:
			return err
		case !ok && classifyTxnError(txnError(resp).Error()) != txnCheckFailed:
			return txnError(resp)
		}
		deleted = ok
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("leave the queue: %w", consulError(err))
	}
	return deleted, nil
}
