package consullock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// A session is what holds keys in Consul: when Consul invalidates it, every
// key it holds is deleted. The same lifecycle serves an EphemeralLock's
// session of its own and a Locker's shared one: create, renew in the
// background (each renewal Consul confirms moves the local deadline on),
// end, and destroy. The local deadline is when Consul may have expired the
// session unseen: from then on its holds are lost.

// cleanupTimeout bounds the calls that give back what a lock had after the
// caller's context ended, or while Consul is failing: they must run, but
// not forever.
const cleanupTimeout = 10 * time.Second

// maxLifespanMargin is how much earlier than Consul could, at most, a holder
// gives up at its local deadline, for clocks that run at slightly different
// rates.
const maxLifespanMargin = time.Second

// localDeadline is when a session created or last renewed by a request sent
// at sent stops being guaranteed: Consul restarts the TTL no earlier than
// that.
func localDeadline(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - min(maxLifespanMargin, ttl/10))
}

// sessionSpec is what a lock asks of its Consul session.
type sessionSpec struct {
	name      string // what the session serves: a key, or "locker"
	ttl       time.Duration
	lockDelay time.Duration
	obs       Observer
	// undone, if set, counts the creates abandoned by their caller that
	// are still being undone.
	undone *sync.WaitGroup
}

type session struct {
	conn      conn
	id        string
	spec      sessionSpec
	stopRenew context.CancelFunc
	gone      chan struct{} // closed once Consul no longer has the session (or gave up destroying it)

	goneOnce, destroyOnce sync.Once

	mu         sync.Mutex
	expires    time.Time
	timer      *time.Timer
	renewing   bool
	err        error // why the session ended
	destroyErr error // why it could not be destroyed
	holds      map[*held]struct{}
}

// startSession creates a session and starts renewing it, retrying passing
// failures until deadline.
func startSession(ctx context.Context, c conn, spec sessionSpec, deadline time.Time) (*session, error) {
	id, sent, err := createSession(ctx, c, spec, deadline)
	if err != nil {
		return nil, err
	}
	s := &session{conn: c, id: id, spec: spec, gone: make(chan struct{}), renewing: true,
		expires: localDeadline(sent, spec.ttl), holds: map[*held]struct{}{}}
	var rctx context.Context
	rctx, s.stopRenew = context.WithCancel(context.Background())
	s.mu.Lock() // the timer may fire at once: expire reads s.timer
	s.timer = time.AfterFunc(time.Until(s.expires), s.expire)
	s.mu.Unlock()
	go s.renew(rctx)
	return s, nil
}

// renew renews the session half a TTL before each local deadline, until
// stopped. A renewal is retried until the deadline; if none is confirmed by
// then, the timer ends the session.
func (s *session) renew(ctx context.Context) {
	for {
		s.mu.Lock()
		expires := s.expires
		s.mu.Unlock()
		if sleep(ctx, time.Until(expires.Add(-s.spec.ttl/2))) != nil {
			return
		}
		sent := time.Now()
		err := retry(ctx, expires, func() error { return renewOnce(ctx, s.conn, s.id, s.spec.obs) })
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errSessionInvalid):
			s.invalidate(fmt.Errorf("%w: Consul invalidated %s", ErrLockLost, s.describe()))
			return
		case err != nil:
			return
		}
		s.extend(localDeadline(sent, s.spec.ttl))
	}
}

func renewOnce(ctx context.Context, c conn, id string, o Observer) error {
	ctx = ahead(ctx)
	var entry *api.SessionEntry
	err := c.call(ctx, func() (err error) {
		entry, _, err = c.c.Session().Renew(id, c.write(ctx))
		return err
	})
	if err == nil && entry == nil {
		return errSessionInvalid
	}
	if err != nil && o != nil && ctx.Err() == nil {
		o.RenewFailed(RenewEvent{Session: id, Err: consulError(err)})
	}
	if err != nil {
		return consulError(err)
	}
	return nil
}

func (s *session) describe() string {
	if s.spec.name == lockerSessionName {
		return "the Locker's session " + s.id
	}
	return "its session " + s.id
}

func (s *session) extend(expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.expires = expires
		s.timer.Reset(time.Until(expires))
	}
}

// stopRenewing leaves the session to its TTL: an EphemeralLock's maximum
// lifespan.
func (s *session) stopRenewing() {
	s.mu.Lock()
	s.renewing = false
	s.mu.Unlock()
	s.stopRenew()
}

// expire ends the session at its local deadline, unless a renewal moved the
// deadline on just as the timer fired.
func (s *session) expire() {
	if s.Err() == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.err == nil {
			s.timer.Reset(time.Until(s.expires))
		}
	}
}

// Err returns why the session ended, or nil while it lives. It checks the
// local deadline itself rather than trusting the timer, which a paused
// process fires late.
func (s *session) Err() error {
	s.mu.Lock()
	expired := s.err == nil && !time.Now().Before(s.expires)
	err := s.err
	s.mu.Unlock()
	if expired {
		s.end(s.expiredErr())
		s.mu.Lock()
		err = s.err
		s.mu.Unlock()
	}
	return err
}

func (s *session) expiredErr() error {
	s.mu.Lock()
	renewing := s.renewing
	s.mu.Unlock()
	if !renewing {
		return fmt.Errorf("%w: its maximum lifespan (LockTimeout %v) passed", ErrLockLost, s.spec.ttl)
	}
	return fmt.Errorf("%w: %s was not renewed within its TTL (%v)", ErrLockLost, s.describe(), s.spec.ttl)
}

// end ends the session locally, once, with err: it stops renewing, and
// tells its holds that they are lost. It reports whether it ended it.
// Consul may still know the session and hold its keys until its TTL runs
// out, as the holders were promised: abandon or destroy it to free them now.
func (s *session) end(err error) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return false
	}
	s.err = err
	s.timer.Stop()
	holds := s.holds
	s.holds = nil
	s.mu.Unlock()
	s.stopRenew()
	for h := range holds {
		h.sessionEnded(err)
	}
	return true
}

// invalidate ends a session that Consul no longer knows.
func (s *session) invalidate(err error) {
	s.end(err)
	s.goneOnce.Do(func() { close(s.gone) })
}

// abandon ends the session, and destroys it in the background so that its
// keys are freed now rather than at the end of its TTL. A session that
// Consul invalidated already is left alone: nothing would wait for the
// call, which could go on for cleanupTimeout after a Close returned.
func (s *session) abandon(err error) {
	s.end(err)
	s.destroyOnce.Do(func() {
		select {
		case <-s.gone:
		default:
			go s.destroyNow()
		}
	})
}

func (s *session) destroyNow() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	err := destroySession(ahead(ctx), s.conn, s.id) // its end frees what it holds
	s.mu.Lock()
	s.destroyErr = err
	s.mu.Unlock()
	s.goneOnce.Do(func() { close(s.gone) })
}

// destroy abandons the session with err and waits until Consul has
// destroyed it, or gave up trying for cleanupTimeout, or ctx ends. It
// returns why the session could not be destroyed, if it could not.
func (s *session) destroy(ctx context.Context, err error) error {
	s.abandon(err)
	select {
	case <-s.gone:
	case <-ctx.Done():
		return fmt.Errorf("destroy session %s: %w", s.id, context.Cause(ctx))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.destroyErr
}

// register records holds of keys just taken with the session, all or
// none: it returns false, registering none, when the session has ended.
func (s *session) register(hs ...*held) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || !time.Now().Before(s.expires) {
		return false
	}
	for _, h := range hs {
		s.holds[h] = struct{}{}
	}
	return true
}

func (s *session) unregister(h *held) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.holds, h)
}

// createSession creates a session whose invalidation deletes the keys it
// holds, as python-consul-lock's sessions do, retrying passing failures
// until deadline. It returns when the successful request was sent: Consul
// starts the TTL no earlier than that.
//
// A create whose answer was lost may still have created a session. Each
// session is named with a random suffix, so that such strays can be found and
// destroyed at once rather than left to their TTL.
func createSession(ctx context.Context, c conn, spec sessionSpec, deadline time.Time) (id string, sent time.Time, err error) {
	name := "consullock: " + spec.name + " " + nonce()
	maybeStrays := false
	err = retry(ctx, deadline, func() error {
		var err error
		sent = time.Now()
		id, err = createSessionOnce(ctx, c, name, spec)
		// A request cut off by the network or by ctx may have created a
		// session all the same.
		maybeStrays = maybeStrays || !unapplied(err)
		return err
	})
	if maybeStrays {
		go destroyStrays(c, name, id)
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("create session: %w", consulError(err))
	}
	return id, sent, nil
}

// createSessionOnce writes the request itself because api.Session.Create
// drops a zero LockDelay, and Consul then applies its default of 15 s.
func createSessionOnce(ctx context.Context, c conn, name string, spec sessionSpec) (string, error) {
	body := map[string]any{
		"Name":      name,
		"TTL":       spec.ttl.String(),
		"LockDelay": spec.lockDelay.String(),
		"Behavior":  api.SessionBehaviorDelete,
		// No health checks: the session lives by its TTL alone. With Consul's
		// default serfHealth check, a holder whose agent is restarted or
		// partitioned would lose the lock at once, without being able to
		// hear of it before another session took the key; by TTL, its local
		// deadline always comes first.
		"Checks":     []string{},
		"NodeChecks": []string{},
	}
	create := func(ctx context.Context) (string, error) {
		var out struct{ ID string }
		err := c.call(ctx, func() error {
			_, err := c.c.Raw().Write("/v1/session/create", body, &out, c.write(ctx))
			return err
		})
		if err != nil {
			return "", err
		}
		if out.ID == "" {
			return "", errors.New("no session ID in Consul's answer")
		}
		return out.ID, nil
	}
	id, abandoned, err := writeDetached(ctx, create)
	if abandoned != nil {
		if spec.undone != nil {
			spec.undone.Add(1)
		}
		go func() {
			if spec.undone != nil {
				defer spec.undone.Done()
			}
			if o := <-abandoned; o.err == nil {
				dctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
				defer cancel()
				destroySession(dctx, c, o.v)
			}
		}()
	}
	return id, err
}

// destroyStrays destroys the sessions named name other than keep: creates
// that succeeded although their caller saw them fail. Best effort: a stray
// it cannot destroy holds no key and expires with its TTL.
func destroyStrays(c conn, name, keep string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var all []*api.SessionEntry
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() (err error) {
		return c.call(ctx, func() (err error) {
			all, _, err = c.c.Session().List(c.query(ctx, api.QueryOptions{RequireConsistent: true}))
			return err
		})
	})
	if err != nil {
		return
	}
	for _, s := range all {
		if s.Name == name && s.ID != keep {
			destroySession(ctx, c, s.ID)
		}
	}
}

// destroySession invalidates the session, which deletes every key it holds,
// retrying passing failures while ctx and cleanupTimeout allow.
// Destroying a session that no longer exists succeeds.
func destroySession(ctx context.Context, c conn, id string) error {
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		return c.call(ctx, func() error {
			_, err := c.c.Session().Destroy(id, c.write(ctx))
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("destroy session %s: %w", id, consulError(err))
	}
	return nil
}

func nonce() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
