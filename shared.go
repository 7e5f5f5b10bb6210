package consullock

import (
	"context"
	"fmt"
	"time"
)

// sharedSession is a Locker's Consul session and the leases taken with it.
type sharedSession struct {
	lk      *Locker
	id      string
	ctx     context.Context // ends with the session: stops its renewer and its leases' watches
	stop    context.CancelFunc
	renewed chan struct{} // closed when the renewer has returned

	// Guarded by lk.mu.
	expires time.Time
	expiry  *time.Timer
	leases  map[*Lease]struct{}
	lostErr error
}

// startSharedSession starts renewing session id, whose local deadline is
// expires.
func startSharedSession(lk *Locker, id string, expires time.Time) *sharedSession {
	s := &sharedSession{lk: lk, id: id, renewed: make(chan struct{}), expires: expires, leases: map[*Lease]struct{}{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	lk.mu.Lock() // the timer may fire at once: end reads s.expiry under lk.mu
	s.expiry = time.AfterFunc(time.Until(expires), s.expire)
	lk.mu.Unlock()
	go func() {
		defer close(s.renewed)
		renewEvery(s.ctx, lk.conn, id, lk.cfg.sessionTTL(), expires, lk.cfg.Observer, s.extend, func() {
			s.end(fmt.Errorf("%w: Consul invalidated the Locker's session", ErrLockLost))
		})
	}()
	return s
}

// expire ends the session at its local deadline, unless a renewal moved the
// deadline on just as the timer fired.
func (s *sharedSession) expire() {
	s.lk.mu.Lock()
	extended := time.Now().Before(s.expires)
	s.lk.mu.Unlock()
	if !extended {
		s.end(s.expiredErr())
	}
}

func (s *sharedSession) expiredErr() error {
	return fmt.Errorf("%w: the Locker's session TTL (%v) ran out unconfirmed", ErrLockLost, s.lk.cfg.sessionTTL())
}

// checkExpiry ends the session if its local deadline has passed, without
// waiting for the timer, which a paused process fires late. It returns why
// the session ended, or nil while it lives: a caller must not trust its
// leases' own state alone, because end tells them one by one, after the
// session is already over.
func (s *sharedSession) checkExpiry() error {
	s.lk.mu.Lock()
	expired := s.lostErr == nil && !time.Now().Before(s.expires)
	s.lk.mu.Unlock()
	if expired {
		s.end(s.expiredErr())
	}
	s.lk.mu.Lock()
	defer s.lk.mu.Unlock()
	return s.lostErr
}

func (s *sharedSession) extend(expires time.Time) {
	s.lk.mu.Lock()
	defer s.lk.mu.Unlock()
	if s.lostErr == nil {
		s.expires = expires
		s.expiry.Reset(time.Until(expires))
	}
}

// end ends the session for the Locker, once: it stops renewing, and every
// lease taken with it is lost with err. The next Acquire creates a new one.
func (s *sharedSession) end(err error) {
	s.lk.mu.Lock()
	if s.lk.sess == s {
		s.lk.sess = nil
	}
	if s.lostErr != nil {
		s.lk.mu.Unlock()
		return
	}
	s.lostErr = err
	s.stop()
	s.expiry.Stop()
	leases := s.leases
	s.leases = nil
	s.lk.mu.Unlock()
	for l := range leases {
		l.fail(err, false) // the session's keys went, or go, with it
	}
}

// register records a key just taken with the session as a lease, and starts
// the clock of its maximum lifespan. It returns nil if the session ended.
func (s *sharedSession) register(key string, slot *keySlot, token uint64, acquiredAt time.Time) *Lease {
	if leases := s.registerAll([]string{key}, []*keySlot{slot}, []uint64{token}, acquiredAt); leases != nil {
		return leases[0]
	}
	return nil
}

// registerAll registers keys taken together, all or none: a session that
// ended meanwhile gets none of them, so no lease of the set is ended (and
// its turn passed on) while the caller goes on to take the set again.
func (s *sharedSession) registerAll(keys []string, slots []*keySlot, tokens []uint64, acquiredAt time.Time) []*Lease {
	deadline := acquiredAt.Add(s.lk.cfg.LockTimeout)
	s.lk.mu.Lock()
	defer s.lk.mu.Unlock()
	if s.lostErr != nil {
		return nil
	}
	leases := make([]*Lease, len(keys))
	for i, key := range keys {
		l := &Lease{s: s, key: key, slot: slots[i], token: tokens[i], deadline: deadline, acquired: time.Now(), lost: make(chan struct{})}
		s.leases[l] = struct{}{}
		l.mu.Lock() // the timer may fire before the assignment is done
		l.maxLife = time.AfterFunc(time.Until(deadline), l.expire)
		l.mu.Unlock()
		leases[i] = l
	}
	return leases
}

func (s *sharedSession) unregister(l *Lease) {
	s.lk.mu.Lock()
	defer s.lk.mu.Unlock()
	delete(s.leases, l)
}
