package consullock

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"weak"

	"github.com/hashicorp/consul/api"
)

// The fast tier: pure logic, tested without Consul, in seconds:
//
//	go test -run '^TestUnit' ./...

func TestUnitClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want failure
	}{
		{api.StatusError{Code: 500, Body: "No cluster leader"}, failPassing},
		{api.StatusError{Code: 429, Body: "Too Many Requests"}, failPassing},
		{api.StatusError{Code: 503}, failPassing},
		{api.StatusError{Code: 403, Body: "Permission denied: token lacks key:write"}, failDenied},
		{api.StatusError{Code: 400, Body: "bad request"}, failPermanent},
		{errors.New("Unexpected response code: 500 (No cluster leader)"), failPassing},
		{fmt.Errorf("%w: Unexpected response code: 429 (rate limited)", ErrConsul), failPassing},
		{errors.New("Unexpected response code: 403 (ACL not found)"), failDenied},
		{errors.New("rpc error making call: No cluster leader"), failPassing},
		// A client agent cut off from the servers (TestClientAgentCutOffFromServers).
		{api.StatusError{Code: 500, Body: "No known Consul servers"}, failPassing},
		{api.StatusError{Code: 500, Body: "rpc error getting client: failed to get conn: dial tcp 127.0.0.1:0->127.0.0.1:8300: connect: connection refused"}, failPassing},
		{api.StatusError{Code: 500, Body: "rpc error making call: stream closed"}, failPassing},
		{errors.New("Unexpected response code: 500"), failPassing}, // a renewal's, without the body
		{errors.New(`invalid session "3f1e"`), failSession},
		{errors.New("Permission denied"), failDenied},
		{&url.Error{Op: "Put", URL: "http://a", Err: syscall.ECONNREFUSED}, failPassing},
		{&url.Error{Op: "Put", URL: "https://a", Err: x509.UnknownAuthorityError{}}, failPermanent},
		{&url.Error{Op: "Put", URL: "http://a", Err: &net.DNSError{Err: "no such host", IsNotFound: true}}, failPermanent},
		{&url.Error{Op: "Put", URL: "ftp://a", Err: errors.New("unsupported protocol scheme")}, failPermanent},
		{io.ErrUnexpectedEOF, failPassing},
		{errWriteTimedOut, failPassing},
		{context.Canceled, failCancelled},
		{fmt.Errorf("take: %w", context.DeadlineExceeded), failCancelled},
		{errors.New("something else"), failPermanent},
	} {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestUnitTxnOutcomes(t *testing.T) {
	t.Parallel()
	for what, want := range map[string]txnOutcome{
		`failed to lock key "k", lock is already held`:                 txnHeld,
		`failed to lock key "k" due to lock delay`:                     txnLockDelay,
		`invalid session "3f1e"`:                                       txnNoSession,
		`Permission denied: token with AccessorID 'x' lacks key:write`: txnDenied,
		`failed index check for key "k", current modify index 7 != 6`:  txnCheckFailed,
		`failed session check for key "k", current session "a" != "b"`: txnCheckFailed,
		`failed to check index, key "k" doesn't exist`:                 txnCheckFailed,
		`something Consul says that consullock does not know`:          txnFailed,
	} {
		if got := classifyTxnError(what); got != want {
			t.Errorf("classifyTxnError(%q) = %d, want %d", what, got, want)
		}
	}
}

func TestUnitRefusal(t *testing.T) {
	t.Parallel()
	res, err := refusal(&api.KVTxnResponse{Errors: api.TxnErrors{{OpIndex: 1, What: `failed to lock key "b", lock is already held`}}})
	if err != nil || res.taken() || res.blocked != 1 || res.delayed {
		t.Errorf("held: %+v, %v", res, err)
	}
	res, err = refusal(&api.KVTxnResponse{Errors: api.TxnErrors{
		{OpIndex: 0, What: `failed to lock key "a", lock is already held`},
		{OpIndex: 2, What: `failed to lock key "c" due to lock delay`},
	}})
	if err != nil || res.blocked != 2 || !res.delayed {
		t.Errorf("a lock delay among the refusals is what the wait must poll out: %+v, %v", res, err)
	}
	if _, err := refusal(&api.KVTxnResponse{Errors: api.TxnErrors{{What: `invalid session "x"`}}}); !errors.Is(err, errSessionInvalid) {
		t.Errorf("invalid session: %v", err)
	}
	if _, err := refusal(&api.KVTxnResponse{Errors: api.TxnErrors{{What: "Permission denied"}}}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("denied: %v", err)
	}
	if _, err := refusal(&api.KVTxnResponse{}); !errors.Is(err, ErrConsul) {
		t.Errorf("no reason: %v", err)
	}
}

func TestUnitUnapplied(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, true},
		{api.StatusError{Code: 429}, true},
		{api.StatusError{Code: 500, Body: "No cluster leader"}, true},
		{api.StatusError{Code: 500, Body: "leadership lost while committing log"}, false},
		{&url.Error{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, true},
		{&url.Error{Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}}, false},
		{errWriteTimedOut, false},
	} {
		if got := unapplied(tc.err); got != tc.want {
			t.Errorf("unapplied(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestUnitConsulErrorWrapsSentinels(t *testing.T) {
	t.Parallel()
	if err := consulError(api.StatusError{Code: 403, Body: "Permission denied: lacks session:write"}); !errors.Is(err, ErrPermissionDenied) || !strings.Contains(err.Error(), "session:write") {
		t.Errorf("403: %v", err)
	}
	if err := consulError(api.StatusError{Code: 429, Body: "Too Many Requests"}); !errors.Is(err, ErrConsul) || !strings.Contains(err.Error(), "http_max_conns_per_client") {
		t.Errorf("429 must name the per-client connection limit: %v", err)
	}
	if err := consulError(errors.New(`invalid session "x"`)); !errors.Is(err, errSessionInvalid) {
		t.Errorf("invalid session: %v", err)
	}
	if err := consulError(context.Canceled); !errors.Is(err, context.Canceled) || errors.Is(err, ErrConsul) {
		t.Errorf("cancellation is the context's: %v", err)
	}
	once := consulError(errors.New("boom"))
	if twice := consulError(once); twice != once {
		t.Errorf("wrapped twice: %v", twice)
	}
}

func TestUnitOpErrorNamesThePackageOnce(t *testing.T) {
	t.Parallel()
	inner := wrapOp("take", "k", fmt.Errorf("%w: detail", ErrNotAcquired))
	outer := wrapOp("acquire", "k", inner)
	if outer != inner || outer.Error() != `consullock: take "k": lock not acquired: detail` || !errors.Is(outer, ErrNotAcquired) {
		t.Errorf("wrapOp twice: %v", outer)
	}
	if wrapOp("x", "", nil) != nil {
		t.Error("wrapOp of nil is not nil")
	}
}

func TestUnitBackoff(t *testing.T) {
	t.Parallel()
	var b backoff
	prev := time.Duration(0)
	for range 20 {
		d := b.step()
		if d < minBackoff/2 || d > maxBackoff {
			t.Fatalf("step %v outside [%v, %v]", d, minBackoff/2, maxBackoff)
		}
		prev = d
	}
	if prev < maxBackoff/2 {
		t.Fatalf("after 20 steps the pause is %v, want at least %v", prev, maxBackoff/2)
	}
}

func TestUnitRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := 0
	err := retry(ctx, time.Now().Add(time.Minute), func() error {
		calls++
		if calls < 3 {
			return api.StatusError{Code: 500}
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("passing failures: %d calls, %v", calls, err)
	}
	calls = 0
	err = retry(ctx, time.Now().Add(time.Minute), func() error { calls++; return api.StatusError{Code: 403} })
	if calls != 1 || err == nil {
		t.Errorf("a permanent failure is not retried: %d calls, %v", calls, err)
	}
	calls = 0
	start := time.Now()
	err = retry(ctx, time.Now().Add(100*time.Millisecond), func() error { calls++; return api.StatusError{Code: 503} })
	if err == nil || time.Since(start) > 200*time.Millisecond || calls < 2 {
		t.Errorf("the deadline bounds the retries: %d calls in %v, %v", calls, time.Since(start), err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	calls = 0
	retry(cctx, time.Now().Add(time.Minute), func() error { calls++; return api.StatusError{Code: 500} })
	if calls != 1 {
		t.Errorf("a cancelled context stops the retries: %d calls", calls)
	}
}

func TestUnitDeadlines(t *testing.T) {
	t.Parallel()
	sent := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := localDeadline(sent, 15*time.Second); got != sent.Add(14*time.Second) {
		t.Errorf("15s TTL: %v", got.Sub(sent))
	}
	if got := localDeadline(sent, 10*time.Second); got != sent.Add(9*time.Second) {
		t.Errorf("10s TTL: %v", got.Sub(sent))
	}
	if d := deadlineAfter(time.Duration(1<<63 - 1)); d.Before(time.Now().Add(50 * 365 * 24 * time.Hour)) {
		t.Errorf("a huge timeout overflowed: %v", d)
	}
	if got := nextIndex(10, 5); got != 1 {
		t.Errorf("an index going back starts over: %d", got)
	}
	if got := nextIndex(0, 0); got != 1 {
		t.Errorf("never block on 0: %d", got)
	}
	if got := nextIndex(5, 9); got != 9 {
		t.Errorf("nextIndex(5, 9) = %d", got)
	}
}

// A renewal confirmed just as the expiry timer fires moves the deadline on:
// the session is not ended. Both lock types share this rule (session.go).
func TestUnitExpiryAfterARenewalIsNotALoss(t *testing.T) {
	t.Parallel()
	s := &session{id: "s", spec: sessionSpec{ttl: 10 * time.Second}, gone: make(chan struct{}),
		stopRenew: func() {}, holds: map[*held]struct{}{}, expires: time.Now().Add(-time.Millisecond)}
	s.timer = time.AfterFunc(time.Hour, func() {})
	defer s.timer.Stop()
	s.extend(time.Now().Add(5 * time.Second)) // the renewal
	s.expire()                                // the timer that fired meanwhile
	if err := s.Err(); err != nil {
		t.Fatalf("a renewed session ended: %v", err)
	}
	s.mu.Lock()
	s.expires = time.Now().Add(-time.Millisecond)
	s.mu.Unlock()
	if err := s.Err(); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Err past the deadline = %v, want ErrLockLost", err)
	}
}

func TestUnitKeys(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"a/b":                    "",
		"":                       "empty name",
		"a//b":                   "empty segment",
		"a/../b":                 `".."`,
		"a b":                    "whitespace",
		"a\x00":                  "control",
		"\xff":                   "UTF-8",
		strings.Repeat("x", 600): "longer than",
	} {
		_, err := lockKey("locks/%s", name)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v", name, err)
		case want != "" && (!errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: %v, want ErrInvalidKey naming %q", name, err, want)
		}
	}
	for _, p := range []string{"locks/x", "locks/%s/%d", "%s%s", "%%s"} {
		if err := validatePattern(p); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("pattern %q: %v", p, err)
		}
	}
	if err := validatePattern("locks/%%/%s"); err != nil {
		t.Errorf("an escaped %% is fine: %v", err)
	}
}

func TestUnitValue(t *testing.T) {
	t.Parallel()
	h, err := ParseHolder(DefaultValue())
	if err != nil || h.LockedAt == "" || h.PID == 0 {
		t.Fatalf("DefaultValue parses to %+v, %v", h, err)
	}
	if _, err := time.Parse(pythonTime, h.LockedAt); err != nil {
		t.Fatalf("locked_at %q is not python-consul-lock's format: %v", h.LockedAt, err)
	}
	if h, err := ParseHolder([]byte(`{"locked_at": "2026-01-01 10:00:00.123456", "other": 1}`)); err != nil || h.LockedAt == "" {
		t.Fatalf("python-consul-lock's value: %+v, %v", h, err)
	}
	if _, err := ParseHolder([]byte("not json")); !errors.Is(err, ErrConsul) {
		t.Fatal("a value that is not JSON parsed")
	}
}

// Options apply to the constructors they name, and are refused elsewhere.
func TestUnitOptionsPerConstructor(t *testing.T) {
	t.Parallel()
	client := WithClient(&api.Client{})
	all := []Option{WithAcquireTimeout(time.Second), WithLockTimeout(time.Minute), WithLockDelay(time.Second),
		WithRenewal(), WithToken("t"), WithSessionTTL(20 * time.Second), WithFairQueueing(), WithReentrancy(),
		WithObserver(NopObserver{}), WithKeyPattern("x/%s"), WithValue(DefaultValue), WithConsulAPILayout()}
	applies := map[builder][]string{
		forLock:     {"WithAcquireTimeout", "WithLockTimeout", "WithLockDelay", "WithRenewal", "WithToken", "WithObserver", "WithKeyPattern", "WithValue", "WithConsulAPILayout"},
		forLocker:   {"WithAcquireTimeout", "WithLockTimeout", "WithLockDelay", "WithRenewal", "WithToken", "WithSessionTTL", "WithFairQueueing", "WithReentrancy", "WithObserver", "WithKeyPattern", "WithValue", "WithConsulAPILayout"},
		forElection: {"WithLockTimeout", "WithLockDelay", "WithRenewal", "WithToken", "WithObserver", "WithKeyPattern", "WithConsulAPILayout"},
	}
	for b, names := range applies {
		for _, opt := range all {
			_, err := newSettings(b, []Option{client, opt})
			want := strings.Contains(" "+strings.Join(names, " ")+" ", " "+opt.name+" ")
			switch {
			case want && err != nil:
				t.Errorf("%s on %s: %v", opt.name, b, err)
			case !want && (!errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), opt.name)):
				t.Errorf("%s on %s: %v, want ErrInvalidOption naming it", opt.name, b, err)
			}
		}
	}
}

func TestUnitNotAcquiredNamesTheHolder(t *testing.T) {
	t.Parallel()
	err := notAcquiredError(&api.KVPair{Session: "s1", Value: []byte(`{"locked_at":"then","host":"h","pid":7}`)}, time.Second)
	if !errors.Is(err, ErrNotAcquired) || !strings.Contains(err.Error(), `host "h", pid 7`) {
		t.Errorf("%v", err)
	}
	err = notAcquiredError(&api.KVPair{Session: "s1", Value: []byte("secret")}, time.Second)
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("a value of another shape reached the message: %v", err)
	}
}

func TestUnitValueSize(t *testing.T) {
	t.Parallel()
	if err := checkValueSize(1, 300*1024); err != nil {
		t.Errorf("300 KiB: %v", err)
	}
	if err := checkValueSize(1, 400*1024); !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "txn_max_req_len") {
		t.Errorf("400 KiB: %v, want ErrInvalidOption naming the limit", err)
	}
	if err := checkValueSize(64, 8*1024); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("64 keys of 8 KiB: %v", err)
	}
}

func TestUnitGrouping(t *testing.T) {
	t.Parallel()
	if p := commonPrefix("locks/a/1", "locks/a/2"); p != "locks/a/" {
		t.Errorf("commonPrefix = %q", p)
	}
	if p := commonPrefix("ab", "abc"); p != "ab" {
		t.Errorf("commonPrefix = %q", p)
	}
	if p := commonFolder("locks/a/k001", "locks/a/k002"); p != "locks/a/" {
		t.Errorf("commonFolder = %q", p)
	}
	if p := commonFolder("a", "b"); p != "" {
		t.Errorf("commonFolder = %q", p)
	}
	h := &hub{splits: map[string]bool{"locks/many/": true}}
	if p := h.prefixFor("locks/many/2001"); p != "locks/many/2" {
		t.Errorf("a key under a split prefix starts a sibling: %q", p)
	}
	if p := h.prefixFor("locks/other/k"); p != "locks/other/k" {
		t.Errorf("any other key starts a group of its own: %q", p)
	}
	order := sortedOrder([]string{"c", "a", "b"})
	if fmt.Sprint(order) != "[1 2 0]" {
		t.Errorf("sortedOrder = %v", order)
	}
}

// Abandoning a session that Consul invalidated already sends nothing: a
// destroy would be useless, and nothing would wait for it (Close returns
// once the session is gone), so it could run on after Close for up to
// cleanupTimeout. A live session abandoned is destroyed.
func TestUnitAbandonLeavesAnInvalidatedSessionAlone(t *testing.T) {
	t.Parallel()
	requests := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests <- r.Method + " " + r.URL.Path
		w.Write([]byte("true"))
	}))
	defer srv.Close()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = srv.Listener.Addr().String()
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Transport.CloseIdleConnections()
	newSession := func(id string) *session {
		return &session{conn: conn{c: c}, id: id, gone: make(chan struct{}), stopRenew: func() {},
			holds: map[*held]struct{}{}, timer: time.AfterFunc(time.Hour, func() {})}
	}
	invalid := newSession("invalidated")
	invalid.invalidate(ErrLockLost)
	if err := invalid.destroy(context.Background(), ErrLockLost); err != nil {
		t.Fatalf("destroy an invalidated session: %v", err)
	}
	live := newSession("live")
	if err := live.destroy(context.Background(), ErrLockLost); err != nil {
		t.Fatalf("destroy a live session: %v", err)
	}
	if got := <-requests; got != "PUT /v1/session/destroy/live" {
		t.Fatalf("first request %q, want the live session's destroy only", got)
	}
	select {
	case got := <-requests:
		t.Fatalf("another request: %q", got)
	default:
	}
}

// A group asks for its prefix as one key only while every watcher needs
// that key alone; a watcher that needs the line never joins such a group.
func TestUnitExactGroups(t *testing.T) {
	t.Parallel()
	hold := &subscription{key: "locks/k", keyOnly: true}
	head := &subscription{key: "locks/k", contender: "locks/k.queue/s-00000000"}
	other := &subscription{key: "locks/k2", keyOnly: true}
	g := &watchGroup{prefix: "locks/k", subs: map[*subscription]struct{}{hold: {}, head: {}}}
	g.narrow()
	if g.exact {
		t.Fatal("a group with a watcher of the line became exact")
	}
	if !g.serves(head) || !g.serves(hold) || !g.serves(other) {
		t.Error("a list group serves every key under its prefix")
	}
	delete(g.subs, head)
	g.narrow()
	if !g.exact {
		t.Fatal("a group of holds of its own key did not become exact")
	}
	if g.serves(head) || g.serves(other) || !g.serves(hold) {
		t.Error("an exact group serves watchers of its key that need nothing else, and no others")
	}
	g.last = map[string]keyState{"locks/k": {exists: true, session: "b", index: 9}}
	head.last = keyState{head: head.contender, queued: true}
	if st := g.stateFor(head); st.head != head.contender || !st.queued || st.session != "b" {
		t.Errorf("an exact answer keeps the watcher's place as last known: %+v", st)
	}
}

// A waiter's view of the line is by arrival: a handoff deleted its
// contender key, and all in the line are then behind it.
func TestUnitPlaceByArrival(t *testing.T) {
	t.Parallel()
	pair := func(s string, create uint64) *api.KVPair {
		return &api.KVPair{Key: contenderKey("k", s), Session: s, CreateIndex: create, ModifyIndex: create}
	}
	q := &place{a: &attempt{}, key: "k", me: contenderKey("k", "me"), at: 20, by: &session{id: "me"}}
	q.saw(keyState{exists: true, session: "x", index: 5}, api.KVPairs{pair("a", 10), pair("me", 20), pair("c", 30)})
	if len(q.ahead) != 1 || q.ahead[0].session != "a" || len(q.behind) != 1 || q.behind[0].session != "c" {
		t.Errorf("in line: ahead %v, behind %v", q.ahead, q.behind)
	}
	q.saw(keyState{exists: true, session: "me", index: 40}, api.KVPairs{pair("c", 30), pair("d", 35)})
	if len(q.ahead) != 0 || len(q.behind) != 2 {
		t.Errorf("handed the key: ahead %v, behind %v", q.ahead, q.behind)
	}
}

// A default read of the line older than what the waiter knew (its own
// enqueue, or a newer answer) is read again consistently: it may not show
// the waiter's contender key, and the waiter would re-enqueue behind those
// it came before, watching one behind it while it is handed the key.
func TestUnitStaleLineReadIsReadAgain(t *testing.T) {
	cases := []struct {
		consistent   bool
		index, known uint64
		want         bool
	}{
		{false, 15, 20, true},  // older than the enqueue: a deposed leader's
		{false, 20, 20, false}, // as new as known
		{false, 30, 20, false}, // newer
		{true, 15, 20, false},  // consistent: the truth, even gone back (tombstones reaped)
	}
	for _, c := range cases {
		if got := olderThanKnown(c.consistent, c.index, c.known); got != c.want {
			t.Errorf("olderThanKnown(%v, %d, %d) = %v, want %v", c.consistent, c.index, c.known, got, c.want)
		}
	}
}

// The calls that keep or give back what is held are not held up by a
// burst of others: with every shared slot taken, a release still goes
// ahead, on a kept slot, and only the kept slots bound it; with slots to
// spare, it takes a shared one and leaves the kept ones free.
func TestUnitReleasesGoAheadOfABurst(t *testing.T) {
	t.Parallel()
	c, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	cn := conn{c: c}
	// inUse reports the shared and the kept slots taken, from within a call.
	inUse := func(ctx context.Context) (shared, kept int, err error) {
		err = cn.call(ctx, func() error {
			sl := slotsOf(c)
			shared, kept = len(sl.any), len(sl.kept)
			return nil
		})
		return shared, kept, err
	}
	// refused reports whether a call with ctx could not get a slot: its
	// context ends soon, so that waiting is the only way to fail.
	refused := func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		return cn.call(ctx, func() error { return nil }) != nil
	}
	bounded, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	if shared, kept, err := inUse(ahead(bounded)); err != nil || shared != 1 || kept != 0 {
		t.Fatalf("a release with slots to spare took %d shared and %d kept slots (%v), want 1 and 0", shared, kept, err)
	}
	done := make(chan struct{})
	entered := make(chan struct{})
	occupy := func(ctx context.Context) {
		go cn.call(ctx, func() error {
			entered <- struct{}{}
			<-done
			return nil
		})
		<-entered
	}
	defer close(done)
	for range maxCallsInFlight - keptSlots {
		occupy(context.Background())
	}
	if !refused(context.Background()) {
		t.Fatal("a call went ahead with every shared slot taken")
	}
	if shared, kept, err := inUse(ahead(bounded)); err != nil || kept != 1 {
		t.Fatalf("a release with every shared slot taken: %d shared and %d kept slots taken (%v), want a kept one", shared, kept, err)
	}
	for range keptSlots {
		occupy(ahead(context.Background()))
	}
	if !refused(ahead(context.Background())) {
		t.Fatalf("a release went ahead with all %d slots taken", maxCallsInFlight)
	}
}

// A client's request slots go with the client: a program that builds a
// client for each piece of work does not keep every one of them alive.
func TestUnitRequestSlotsDoNotKeepTheClient(t *testing.T) {
	t.Parallel()
	collected := make(chan struct{}, 1)
	var key weak.Pointer[api.Client]
	func() {
		c, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
		if err != nil {
			t.Fatal(err)
		}
		key = weak.Make(c)
		runtime.AddCleanup(c, func(ch chan struct{}) { ch <- struct{}{} }, collected)
		if err := (conn{c: c}).call(context.Background(), func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.After(10 * time.Second)
	for gone := false; ; {
		runtime.GC()
		if _, kept := callSlots.Load(key); gone && !kept {
			return
		}
		select {
		case <-collected:
			gone = true
		case <-deadline:
			if !gone {
				t.Fatal("a client that made a call was never collected")
			}
			t.Fatal("a collected client's request slots were never freed")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A waiter on a shared list returns an answer newer than its own, whatever
// the list's index was when it joined; waits for one otherwise; and, once
// woken, starts over from an answer whose index went back (a snapshot
// restore) rather than wait for the index to pass its own again.
func TestUnitListWaitersSeeEveryChange(t *testing.T) {
	at := listAt{conn{c: &api.Client{}}, "k/slot-"}
	w := &listWatch{at: at, stop: func() {}, index: 5, pairs: api.KVPairs{{Key: "k/slot-0"}}, newer: make(chan struct{})}
	listWatches.Lock()
	listWatches.m[at] = w // joinList finds it: no query runs
	listWatches.Unlock()
	t.Cleanup(func() {
		listWatches.Lock()
		delete(listWatches.m, at)
		listWatches.Unlock()
	})
	ctx := context.Background()
	if _, index, err := awaitList(ctx, at.c, at.prefix, 3, time.Now().Add(time.Minute)); err != nil || index != 5 {
		t.Fatalf("a waiter behind the list: index %d, %v; want 5 at once", index, err)
	}
	listWatches.Lock()
	listWatches.m[at] = w // the last waiter's leave took it out
	listWatches.Unlock()
	if _, _, err := awaitList(ctx, at.c, at.prefix, 5, time.Now().Add(20*time.Millisecond)); !errors.Is(err, errDeadline) {
		t.Fatalf("a waiter as new as the list, nothing changing: %v, want errDeadline", err)
	}
	for _, tc := range []struct{ mine, next uint64 }{{5, 6}, {9, 2}} {
		listWatches.Lock()
		listWatches.m[at] = w
		listWatches.Unlock()
		got := make(chan uint64, 1)
		go func() {
			_, index, err := awaitList(ctx, at.c, at.prefix, tc.mine, time.Now().Add(time.Minute))
			if err != nil {
				t.Error(err)
			}
			got <- index
		}()
		for { // until the waiter counts itself in
			w.mu.Lock()
			joined := w.waiters > 0
			w.mu.Unlock()
			if joined {
				break
			}
			runtime.Gosched()
		}
		select {
		case index := <-got:
			t.Fatalf("a waiter at %d returned %d before any change", tc.mine, index)
		default:
		}
		// The list answers again at each wait time: a waiter that took its
		// first look only after the first answer is woken by the next.
		tick := time.NewTicker(10 * time.Millisecond)
		timeout := time.After(5 * time.Second)
	wake:
		for {
			w.publish(nil, tc.next, nil)
			select {
			case index := <-got:
				if index != tc.next {
					t.Fatalf("a waiter at %d woken by an answer at %d returned %d", tc.mine, tc.next, index)
				}
				break wake
			case <-tick.C:
			case <-timeout:
				t.Fatalf("a waiter at %d not woken by answers at %d", tc.mine, tc.next)
			}
		}
		tick.Stop()
	}
}
