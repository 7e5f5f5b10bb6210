package consullock

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Loss detection. Every held key is watched from the moment it is taken,
// so that Err and Lost report the same losses. A blocking query per key
// would cost a connection each, and an agent serves at most 200 per client
// address (limits.http_max_conns_per_client), so the watches of all the
// locks built on one client share at most maxWatchQueries blocking queries:
// each follows a key prefix that covers some of the watched keys, with a
// list (of default consistency) that wakes when anything under the prefix
// changes, and tells each watcher of its key's state. Keys are watched
// under their own key as prefix while the budget allows, then under the
// deepest folder two groups share. The hubs, and the semaphores' shared
// lists (listwatch.go), are the package's only other state: caches of
// watches per client, which hold nothing once nothing is watched.

const (
	maxWatchQueries = 8
	// watchWait is the wait time of each watch query: a process that goes
	// away frees its slots in the agent within it.
	watchWait = 30 * time.Second
	// contenderWait is the wait time of a query on a waiter's contender
	// key alone: such a query usually ends with the key's deletion, and
	// one that a waiter gave up on should free its slot soon.
	contenderWait = 5 * time.Second
	// watchLinger is how long a query that nobody needs any more may run
	// before it is cancelled: usually the change that ended the need
	// answers it first, and its connection is kept for reuse.
	watchLinger = 2 * time.Second
	// watchDelay is how long a key is held before a query watches it: a
	// key given back within it (a short critical section) costs no query
	// at all, and a change within it is seen by the first query, which
	// blocks from the index of the take.
	watchDelay = 10 * time.Millisecond
	// splitAbove is how many watched keys make a group split into one per
	// next character of its prefix, when the budget allows: a change then
	// wakes a smaller list.
	splitAbove = 512
)

// keyState is what a watch sees of a key. A waiter's watch also sees the
// key's queue (see queue.go): the first live contender, and whether the
// waiter's own contender key is still there.
type keyState struct {
	exists  bool
	session string
	index   uint64 // the key's ModifyIndex
	head    string // a waiter's watch: the contender key first in the queue
	queued  bool   // a waiter's watch: its contender key is in the queue
}

func (st keyState) free() bool { return !st.exists || st.session == "" }

// subscription is one watcher of one key.
type subscription struct {
	key       string
	contender string         // a waiter's own contender key; "" for a hold
	self      string         // a waiter's session
	known     uint64         // the index at which the watcher knew the key
	changed   func(keyState) // told of each state seen from known on; it must not block
	group     *watchGroup    // guarded by the hub's mu
	last      keyState       // the state last told, or expected
	hub       *hub
	since     time.Time // when the watch began
	eager     bool      // watched at once, not after watchDelay: a waiter's, until handed the key
	// keyOnly says that the watcher needs its key's state alone, not the
	// key's line: a hold or a head of the line that knows who comes next,
	// or a waiter watching the contender ahead. A group whose watchers
	// all need no more than their one key asks for that key alone (see
	// watchGroup.exact).
	keyOnly bool
}

// hub holds the watch queries of one client and token.
type hub struct {
	conn   conn
	mu     sync.Mutex
	groups map[*watchGroup]struct{} // live and retired groups with a running query
	splits map[string]bool          // prefixes whose keys are watched by one group per next character
	noted  map[string]notedState    // keys this process wrote last, newer than any answer (see note)
}

// notedState is a key's state after a write of this process, and, when
// the write read it, the key's queue then.
type notedState struct {
	st     keyState
	queue  []contender
	listed bool   // queue was read with the write, at index
	index  uint64 // the write's index
	// releasedBy is the session that gave the key back: an answer that
	// shows the key still held by it is older than the write.
	releasedBy string
	at         time.Time
}

type watchGroup struct {
	prefix  string
	subs    map[*subscription]struct{}
	index   uint64                 // of the last answer; 0 before the first
	asked   uint64                 // the index the query in flight blocks from
	last    map[string]keyState    // the last answer, by key
	queues  map[string][]contender // the last answer's live contenders, by lock key
	at      time.Time              // when the last answer came
	retired bool                   // merged into another: its answers are not used
	cancel  context.CancelFunc
	idle    *time.Timer   // cancels the query once the group has lingered unneeded
	wake    chan struct{} // an eager watcher joined: stop pausing
	gone    bool          // its prefix is a contender key, now deleted: its watch is over
	// exact says that the group's queries read its prefix as one key, not
	// as a list: its watchers all watch that key and need nothing else.
	// Such a query wakes only when the key changes, not at each arrival
	// in its line, and answers with one key. A group that becomes exact
	// stays so: a watcher that needs more joins another.
	exact bool
}

var hubs = struct {
	sync.Mutex
	m map[conn]*hub
}{m: map[conn]*hub{}}

// watchKey tells changed of each state of key, seen from the index of
// expect on, that differs from expect and from the last one told, until the
// returned subscription is cancelled. A hold's watch starts querying once
// it is watchDelay old; an eager one (a waiter's, or a contended hold's
// that knows of nobody next) at once.
// keyOnly says that the watcher needs nothing of the key's line.
func watchKey(c conn, key string, expect keyState, eager, keyOnly bool, changed func(keyState)) *subscription {
	return subscribe(c, &subscription{key: key, known: expect.index, changed: changed, last: expect, eager: eager, keyOnly: keyOnly})
}

// watchQueue is watchKey for a waiter whose contender key is contender,
// which knew the key and its queue as expect at index known: it is told
// of each change of the key's holder, of the queue's head, and of its own
// place in the queue. A head of the line that knows who comes after it
// needs to hear of no later arrival (keyOnly): it is then told of changes
// of the key alone, and its place is taken to stay as expect has it.
func watchQueue(c conn, key, contender, self string, known uint64, expect keyState, keyOnly bool, changed func(keyState)) *subscription {
	return subscribe(c, &subscription{key: key, contender: contender, self: self, known: known, changed: changed, last: expect, eager: true, keyOnly: keyOnly})
}

func subscribe(c conn, sub *subscription) *subscription {
	hubs.Lock()
	h := hubs.m[c]
	if h == nil {
		h = &hub{conn: c, groups: map[*watchGroup]struct{}{}, splits: map[string]bool{}, noted: map[string]notedState{}}
		hubs.m[c] = h
	}
	h.mu.Lock()
	hubs.Unlock()
	expect := sub.last
	sub.hub, sub.since = h, time.Now()
	g := h.join(sub)
	if g.index == 0 && g.asked != 0 && sub.known < g.asked {
		// The group's first query blocks from past this key's take: a
		// change in between would wake it only with the next one.
		go h.catchUp(sub)
	}
	st, now := keyState{}, false
	if g.index != 0 && g.index >= sub.known && g.last != nil {
		// The group's last answer is already as new as the watcher's view.
		if seen := g.stateFor(sub); seen != expect {
			st, now = seen, true
			sub.last = st
		}
	}
	h.mu.Unlock()
	if now {
		sub.changed(st)
	}
	return sub
}

// cancel ends the subscription.
func (sub *subscription) cancel() {
	h := sub.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	g := sub.group
	if g == nil {
		return
	}
	delete(g.subs, sub)
	sub.group = nil
	if len(g.subs) == 0 {
		g.linger()
	}
}

// join puts sub in a group that covers its key, making one if needed.
// h.mu is held.
func (h *hub) join(sub *subscription) *watchGroup {
	g := h.covering(sub)
	if g == nil {
		if h.live() >= maxWatchQueries {
			h.mergeClosest(sub.key)
			g = h.covering(sub)
		}
		if g == nil {
			g = h.start(h.prefixFor(sub.key), nil)
			g.exact = sub.keyOnly && g.prefix == sub.key
		}
	}
	g.subs[sub] = struct{}{}
	sub.group = g
	if sub.eager {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
	if g.idle != nil {
		g.idle.Stop()
		g.idle = nil
	}
	return g
}

// prefixFor is the prefix of a new group for key: its sibling's level under
// a prefix that was split, else the key itself.
func (h *hub) prefixFor(key string) string {
	best := ""
	for p := range h.splits {
		if len(p) > len(best) && len(key) > len(p) && key[:len(p)] == p {
			best = p
		}
	}
	if best == "" {
		return key
	}
	return key[:len(best)+1]
}

// covering returns the live group with the longest prefix of sub's key
// that tells sub what it needs, or nil.
func (h *hub) covering(sub *subscription) *watchGroup {
	var best *watchGroup
	for g := range h.groups {
		if g.serves(sub) && (best == nil || len(g.prefix) > len(best.prefix)) {
			best = g
		}
	}
	return best
}

// serves reports whether g's queries tell sub what it needs. The hub's mu
// is held.
func (g *watchGroup) serves(sub *subscription) bool {
	switch {
	case g.retired || g.gone || !covers(g.prefix, sub.key):
		return false
	case g.exact:
		return sub.keyOnly && sub.key == g.prefix
	}
	return true
}

// narrow makes g exact once all its watchers need its prefix's key alone:
// a list wakes at each arrival in the key's line, which none of them needs
// to hear of. The hub's mu is held.
func (g *watchGroup) narrow() {
	if g.exact || len(g.subs) == 0 {
		return
	}
	for sub := range g.subs {
		if !sub.keyOnly || sub.key != g.prefix {
			return
		}
	}
	g.exact = true
}

func (h *hub) live() int {
	n := 0
	for g := range h.groups {
		if !g.retired {
			n++
		}
	}
	return n
}

// mergeClosest makes room for key: of the live groups' prefixes and key,
// it takes the two that share the longest folder, and replaces the groups
// that folder covers by one group on it. h.mu is held.
func (h *hub) mergeClosest(key string) {
	cands := []string{key}
	for g := range h.groups {
		if !g.retired {
			cands = append(cands, g.prefix)
		}
	}
	best := ""
	found := false
	for i := range cands {
		for j := i + 1; j < len(cands); j++ {
			if p := commonFolder(cands[i], cands[j]); !found || len(p) > len(best) {
				best, found = p, true
			}
		}
	}
	var moved []*subscription
	for g := range h.groups {
		if !g.retired && len(g.prefix) >= len(best) && g.prefix[:len(best)] == best {
			for sub := range g.subs {
				moved = append(moved, sub)
			}
			g.subs = map[*subscription]struct{}{}
			g.retired = true
			g.linger()
		}
	}
	delete(h.splits, best)
	h.start(best, moved)
}

// commonFolder is the longest folder ("a/b/") that holds both a and b: a
// group on a folder takes in every later key of that folder, so that groups
// are merged once per folder rather than once per key.
func commonFolder(a, b string) string {
	p := commonPrefix(a, b)
	return p[:strings.LastIndexByte(p, '/')+1]
}

func commonPrefix(a, b string) string {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return a[:i]
		}
	}
	return a[:n]
}

// start starts a group on prefix with subs. h.mu is held.
func (h *hub) start(prefix string, subs []*subscription) *watchGroup {
	ctx, cancel := context.WithCancel(context.Background())
	g := &watchGroup{prefix: prefix, subs: map[*subscription]struct{}{}, cancel: cancel, wake: make(chan struct{}, 1)}
	for _, sub := range subs {
		g.subs[sub] = struct{}{}
		sub.group = g
	}
	h.groups[g] = struct{}{}
	go h.follow(ctx, g)
	return g
}

// young returns how long until g's oldest watcher has waited watchDelay:
// until then no query is needed. The hub's mu is held.
func (g *watchGroup) young() time.Duration {
	pause := watchDelay
	for sub := range g.subs {
		if sub.eager {
			return 0
		}
		pause = min(pause, watchDelay-time.Since(sub.since))
	}
	return pause
}

// linger lets an unneeded group's query run a little, for the answer that
// usually comes with the change that ended the need, then cancels it.
// The hub's mu is held.
func (g *watchGroup) linger() {
	if g.idle == nil && g.asked != 0 { // no query yet: follow sees it is not needed
		g.idle = time.AfterFunc(watchLinger, g.cancel)
	}
}

// pause waits for d, or until an eager watcher joins g.
func (g *watchGroup) pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-g.wake:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// follow runs g's blocking queries until g is no longer needed.
func (h *hub) follow(ctx context.Context, g *watchGroup) {
	defer h.drop(g)
	var b backoff
	wait, contender := watchWait, isContenderKey(g.prefix)
	if contender {
		wait = contenderWait
	}
	for {
		h.mu.Lock()
		done := g.retired || len(g.subs) == 0
		if pause := g.young(); !done && pause > 0 {
			h.mu.Unlock()
			if g.pause(ctx, pause) != nil {
				return
			}
			continue
		}
		index := g.index
		if index == 0 { // the first query blocks from the oldest take it serves
			for sub := range g.subs {
				if index == 0 || sub.known < index {
					index = sub.known
				}
			}
		}
		g.asked = index
		g.narrow()
		exact := g.exact
		h.mu.Unlock()
		if done {
			return
		}
		pairs, last, err := h.read(ctx, g.prefix, exact, index, wait)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			t := time.NewTimer(b.step())
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		b = backoff{}
		next := nextIndex(index, last)
		if exact {
			// A key's index is its ModifyIndex, which may be older than
			// the list index the query blocked from: the answer is as
			// new as the later of the two.
			next = max(index, last, 1)
		}
		if h.deliver(g, pairs, next) {
			return
		}
		// A wide prefix answers with many keys: pace its queries so that
		// a busy prefix does not become a loop of large lists.
		if n := len(pairs); n > 100 {
			if sleep(ctx, min(time.Duration(n)*10*time.Microsecond, 100*time.Millisecond)) != nil {
				return
			}
		}
	}
}

// read is one blocking query of a group: a list of prefix, or, exact, the
// one key prefix. It returns the pairs and the answer's index.
func (h *hub) read(ctx context.Context, prefix string, exact bool, index uint64, wait time.Duration) (api.KVPairs, uint64, error) {
	q := h.conn.query(ctx, api.QueryOptions{WaitIndex: index, WaitTime: wait})
	if !exact {
		pairs, meta, err := h.conn.c.KV().List(prefix, q)
		if err != nil {
			return nil, 0, err
		}
		return pairs, meta.LastIndex, nil
	}
	pair, meta, err := h.conn.c.KV().Get(prefix, q)
	if err != nil {
		return nil, 0, err
	}
	if pair == nil {
		return nil, meta.LastIndex, nil
	}
	return api.KVPairs{pair}, meta.LastIndex, nil
}

// deliver records an answer of g's and tells each watcher whose view it
// is as new as of a change of its key. It reports whether the answer ends
// g: a contender key gone ends its watchers' wait (if it comes back, it is
// a later turn, at the end of the line), and the watch ends with its answer
// rather than with a cancelled query, whose slot the agent would keep for
// the wait time. Watchers that joined for the later turn start over (drop).
func (h *hub) deliver(g *watchGroup, pairs api.KVPairs, index uint64) (gone bool) {
	type told struct {
		sub *subscription
		st  keyState
	}
	var tell []told
	h.mu.Lock()
	if g.retired {
		h.mu.Unlock()
		return false
	}
	g.index, g.at = index, time.Now()
	g.last = make(map[string]keyState, len(pairs))
	for _, p := range pairs {
		g.last[p.Key] = keyState{exists: true, session: p.Session, index: p.ModifyIndex}
	}
	g.queues = nil
	if !g.exact {
		g.queues = contendersIn(pairs)
	}
	for sub := range g.subs {
		if st := g.stateFor(sub); index >= sub.known && st != sub.last {
			sub.last = st
			if sub.self != "" && st.exists && st.session == sub.self {
				// Handed the key: the waiter is done, and its hold's watch
				// needs no query before watchDelay (held.start), which
				// would wake again at the release, the holder's own write.
				sub.eager, sub.since = false, time.Now()
			}
			tell = append(tell, told{sub, st})
		}
	}
	if len(g.subs) > splitAbove {
		h.split(g)
	}
	g.gone = isContenderKey(g.prefix) && !slices.ContainsFunc(pairs, func(p *api.KVPair) bool { return p.Key == g.prefix })
	gone = g.gone
	h.mu.Unlock()
	for _, t := range tell {
		t.sub.changed(t.st)
	}
	return gone
}

// split replaces a large group by one group per next character of its
// prefix among its watched keys, if the budget allows. h.mu is held.
func (h *hub) split(g *watchGroup) {
	children := map[string][]*subscription{}
	for sub := range g.subs {
		if len(sub.key) == len(g.prefix) {
			return // a key that is the prefix itself: no finer prefix covers it
		}
		p := sub.key[:len(g.prefix)+1]
		children[p] = append(children[p], sub)
	}
	if len(children) < 2 || h.live()-1+len(children) > maxWatchQueries {
		return
	}
	g.retired = true
	g.subs = map[*subscription]struct{}{}
	h.splits[g.prefix] = true
	for p, subs := range children {
		c := h.start(p, subs)
		c.index, c.last, c.queues, c.at = g.index, g.last, g.queues, g.at // the parent's answer covers the child's keys
	}
}

// catchUp reads sub's key (and its queue) once, and tells sub of its state
// if it changed.
func (h *hub) catchUp(sub *subscription) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var pairs api.KVPairs
	var meta *api.QueryMeta
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() (err error) {
		return h.conn.call(ctx, func() (err error) {
			pairs, meta, err = h.conn.c.KV().List(sub.key, h.conn.query(ctx, api.QueryOptions{}))
			return err
		})
	})
	if err != nil || meta.LastIndex < sub.known {
		return // the local deadline covers a watch that cannot see
	}
	st := stateIn(pairs, sub)
	h.mu.Lock()
	tell := sub.group != nil && st != sub.last
	if tell {
		sub.last = st
	}
	h.mu.Unlock()
	if tell {
		sub.changed(st)
	}
}

// drop forgets a group whose query has ended, and the hub once it has none.
func (h *hub) drop(g *watchGroup) {
	g.cancel()
	hubs.Lock()
	defer hubs.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.groups, g)
	if g.idle != nil {
		g.idle.Stop()
	}
	// Still needed: its query failed for good, or its contender key went
	// while watchers of the key's next turn joined. Start over for them.
	var subs []*subscription
	for sub := range g.subs {
		if !g.gone || sub.known > g.index {
			subs = append(subs, sub)
		}
	}
	if len(subs) > 0 && !g.retired {
		h.start(g.prefix, subs)
		return
	}
	if len(h.groups) == 0 && hubs.m[h.conn] == h {
		delete(hubs.m, h.conn)
	}
}

// stateFor is what g's last answer says of sub's key (and queue). The hub's
// mu is held.
func (g *watchGroup) stateFor(sub *subscription) keyState {
	st := g.last[sub.key]
	switch {
	case sub.contender == "":
	case g.exact: // no word of the line: the place is as last known
		st.head, st.queued = sub.last.head, sub.last.queued
	default:
		st.head, st.queued = queuePlace(g.queues[sub.key], sub.contender)
	}
	return st
}

// stateIn is what pairs, a list of sub's key as a prefix, say of it.
func stateIn(pairs api.KVPairs, sub *subscription) keyState {
	var st keyState
	for _, p := range pairs {
		if p.Key == sub.key {
			st = keyState{exists: true, session: p.Session, index: p.ModifyIndex}
		}
	}
	if sub.contender != "" {
		st.head, st.queued = queuePlace(contendersIn(pairs)[sub.key], sub.contender)
	}
	return st
}

// successor returns the first live contender for key, other than those of
// session exclude, in the newest view this process has: the answers of its
// watches, what its writes read, and queue, seen at index. The view may be
// old; the handoff checks that the contender is still there.
func (h *hub) successor(key, exclude string, index uint64, queue []contender) (contender, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	newest := index
	for g := range h.groups {
		if g.tellsLine(key) && g.index >= newest {
			queue, newest = g.queues[key], g.index
		}
	}
	if n, ok := h.noted[key]; ok && n.listed && n.index > newest {
		queue = n.queue
	}
	return firstOther(queue, exclude)
}

// tellsLine reports whether g's last answer says who waits for key. The
// hub's mu is held.
func (g *watchGroup) tellsLine(key string) bool {
	return !g.retired && !g.exact && g.index != 0 && covers(g.prefix, key)
}

// holderOf returns key's state as this process saw it last, from its own
// writes or from an answer of a watch, and whether contenders were waiting
// then: a hint of whether a take would find the key held or jump the
// queue. ok is false when the process knows nothing recent.
func (h *hub) holderOf(key string) (st keyState, waiting, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var newest, newestLine time.Time
	for g := range h.groups {
		if !g.retired && g.index != 0 && covers(g.prefix, key) && g.at.After(newest) {
			st, newest, ok = g.last[key], g.at, true
		}
		if g.tellsLine(key) && g.at.After(newestLine) {
			waiting, newestLine = len(g.queues[key]) > 0, g.at
		}
	}
	if n, found := h.noted[key]; found && (n.at.After(newest) || n.releasedBy != "" && st.session == n.releasedBy) {
		st, newest, ok = n.st, n.at, true
		if n.listed {
			waiting = len(n.queue) > 0
		}
	}
	return st, waiting, ok && time.Since(newest) < noteLife
}

// noteLife is how long the state of a key seen or written is a hint.
const noteLife = 2 * time.Second

// note records key's state just after a write of this process changed it,
// as a hint for the next acquire of key in this process.
func note(c conn, key string, st keyState) { remember(c, key, notedState{st: st}) }

// noteReleased records that session gave key back.
func noteReleased(c conn, key, session string) { remember(c, key, notedState{releasedBy: session}) }

// noteQueue records key's state and queue as a write at index read them.
func noteQueue(c conn, key string, st keyState, queue []contender, index uint64) {
	remember(c, key, notedState{st: st, queue: queue, listed: true, index: index})
}

func remember(c conn, key string, n notedState) {
	hubs.Lock()
	h := hubs.m[c]
	hubs.Unlock()
	if h == nil {
		return // nothing watched: no hint is worth keeping
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.noted) >= 1024 {
		for k, old := range h.noted {
			if time.Since(old.at) >= noteLife {
				delete(h.noted, k)
			}
		}
	}
	n.at = time.Now()
	h.noted[key] = n
}

// hubOf returns the hub of c's watches, or nil when none runs.
func hubOf(c conn) *hub {
	hubs.Lock()
	defer hubs.Unlock()
	return hubs.m[c]
}

func covers(prefix, key string) bool { return strings.HasPrefix(key, prefix) }
