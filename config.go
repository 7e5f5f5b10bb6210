package consullock

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Limits that Consul itself puts on a session, which is what a lock's
// lifespan and lock delay are made of.
const (
	MinLockTimeout = 10 * time.Second // shortest session TTL Consul accepts
	MaxLockTimeout = 24 * time.Hour   // longest session TTL Consul accepts
	MaxLockDelay   = 60 * time.Second // Consul caps a session's lock delay here
)

// Config holds the settings every lock type shares. A new lock starts from
// a copy of Defaults, then applies its options; the result is validated
// once, when the lock is built.
type Config struct {
	// Client talks to Consul. It must be set here or with WithClient.
	// Locks built on the same Client share its connections and watches.
	Client *api.Client

	// AcquireTimeout bounds how long Acquire waits for a lock that another
	// holder has. Zero means a single attempt, as in python-consul-lock.
	// An Election does not use it: Campaign waits until its context ends.
	AcquireTimeout time.Duration

	// LockTimeout is the lock's maximum lifespan. For an EphemeralLock it is
	// the TTL of the Consul session that holds it: a holder that never
	// releases (a crash, a hang) loses the lock when Consul invalidates the
	// session, which Consul may do from LockTimeout after the session was
	// created or last renewed (a waiting lock renews it, so that is at most
	// LockTimeout/2 before the acquire) until about twice that; Lost fires
	// first. For a Locker's lease it is enforced by the Locker, from the
	// acquire. For an Election it is how soon a leader that died is
	// replaced. It must lie in [MinLockTimeout, MaxLockTimeout].
	LockTimeout time.Duration

	// LockDelay is how long Consul refuses the key to everyone after the
	// session holding it was invalidated (expired or destroyed by someone
	// else), so that a holder which has not yet noticed its loss is not
	// overlapped at once. A clean Release never imposes it. Zero is sent to
	// Consul as zero (the consul/api client would omit it and get 15 s).
	// It must lie in [0, MaxLockDelay].
	LockDelay time.Duration

	// KeyPattern turns a lock's name into its Consul key. It must contain
	// exactly one %s, and no other verb.
	KeyPattern string

	// Value produces the value stored under the key while the lock is held.
	// Nil stores DefaultValue. An Election stores the value given to
	// Campaign instead.
	Value func() []byte

	// Token is the ACL token for the lock's calls; "" uses the client's.
	Token string

	// Observer, when not nil, receives the lock's events (see Observer).
	Observer Observer
}

// Defaults is the Config every new lock starts from, like python-consul-lock's
// defaults module. Set its fields once at start-up, before locks are built
// concurrently; it is the only package-level setting.
var Defaults = Config{
	LockTimeout: 180 * time.Second,
	KeyPattern:  "locks/ephemeral/%s",
	Value:       DefaultValue,
}

// builder names a constructor, for the options that apply to it.
type builder uint8

const (
	forLock     builder = 1 << iota // NewEphemeralLock
	forLocker                       // NewLocker
	forElection                     // NewElection
	forAll      = forLock | forLocker | forElection
)

func (b builder) String() string {
	var names []string
	for _, n := range []struct {
		b    builder
		name string
	}{{forLock, "NewEphemeralLock"}, {forLocker, "NewLocker"}, {forElection, "NewElection"}} {
		if b&n.b != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, " and ")
}

// Option changes one setting of a lock being built. Each option applies to
// the constructors its documentation names; given to another, it is
// refused with an error wrapping ErrInvalidOption, never ignored.
type Option struct {
	name  string
	to    builder
	apply func(*settings)
}

// settings is a Config with the settings that options alone set.
type settings struct {
	Config
	renew      bool
	sessionTTL time.Duration
	fair       bool
	reentrant  bool
	apiLayout  bool
	given      map[string]bool // the options given, by name
}

// WithClient sets the Consul client. For every constructor. A client whose
// transport has DisableCompression set, and MaxIdleConnsPerHost raised to
// about 72, serves contended locks with less CPU (see the README, under
// Connections).
func WithClient(c *api.Client) Option {
	return Option{"WithClient", forAll, func(s *settings) { s.Client = c }}
}

// WithAcquireTimeout sets how long Acquire waits for a held lock; zero means
// one attempt. For NewEphemeralLock and NewLocker; Campaign waits until its
// context ends instead.
func WithAcquireTimeout(d time.Duration) Option {
	return Option{"WithAcquireTimeout", forLock | forLocker, func(s *settings) { s.AcquireTimeout = d }}
}

// WithLockTimeout sets the lock's maximum lifespan (see
// Config.LockTimeout). For every constructor; not with WithRenewal on
// NewLocker, whose leases then have no maximum lifespan.
func WithLockTimeout(d time.Duration) Option {
	return Option{"WithLockTimeout", forAll, func(s *settings) { s.LockTimeout = d }}
}

// WithLockDelay sets how long Consul keeps the key from everyone after the
// holder's session was invalidated. For every constructor.
func WithLockDelay(d time.Duration) Option {
	return Option{"WithLockDelay", forAll, func(s *settings) { s.LockDelay = d }}
}

// WithRenewal keeps a lock until Release. For NewEphemeralLock, its session
// is renewed every LockTimeout/2, and a renewal that fails for a passing
// reason is retried until the local deadline (see EphemeralLock.Lost);
// LockTimeout then bounds only how long a holder that died or was cut off
// from Consul keeps the lock. For NewLocker, its leases have no maximum
// lifespan: the Locker's session, renewed anyway, is what a dead process's
// locks last (WithSessionTTL). NewElection always renews. Off by default:
// python-consul-lock's fixed maximum lifespan.
func WithRenewal() Option {
	return Option{"WithRenewal", forAll, func(s *settings) { s.renew = true }}
}

// WithToken sets the ACL token for the lock's calls to Consul, instead of
// the client's. For every constructor.
func WithToken(token string) Option {
	return Option{"WithToken", forAll, func(s *settings) { s.Token = token }}
}

// WithSessionTTL sets the TTL of a Locker's shared session, which the Locker
// renews every half of it: how soon Consul frees the locks of a process that
// died or was cut off. Zero means 15 s; otherwise it must lie in
// [MinLockTimeout, MaxLockTimeout]. For NewLocker only: the session of an
// EphemeralLock or an Election lives by LockTimeout.
func WithSessionTTL(d time.Duration) Option {
	return Option{"WithSessionTTL", forLocker, func(s *settings) { s.sessionTTL = d }}
}

// WithFairQueueing turns a Locker's local handoffs off. Waiters of
// different processes always queue (see queue.go); by default, though, a
// Locker hands a released key to its own next goroutine without a write, up
// to 64 times in a row, before the first waiter of another process gets it.
// In this mode it never does: each release hands the key to the first
// waiter in Consul's line, whichever process it belongs to, so a busy
// process cannot keep others waiting for 64 turns. The Locker's own
// goroutines still wait for a key one after the other (one session has one
// place in a key's line): the next joins Consul's line when the one before
// it is done, and a waiter of another process that came in between is
// served first. For NewLocker only; AcquireAll and Semaphore are not
// queued, and refuse a fair Locker.
func WithFairQueueing() Option {
	return Option{"WithFairQueueing", forLocker, func(s *settings) { s.fair = true }}
}

// WithReentrancy lets a Locker's Acquire of a name whose lease the context
// carries count one more hold instead of waiting (see ContextWithLease).
// For NewLocker only.
func WithReentrancy() Option {
	return Option{"WithReentrancy", forLocker, func(s *settings) { s.reentrant = true }}
}

// WithConsulAPILayout makes the lock's keys those of consul/api's Lock and
// of `consul lock`, so that during a migration old and new processes wait
// for each other instead of failing: each key is marked with consul/api's
// flags (api.LockFlagValue), without which api.Lock fails with
// ErrLockConflict on a key it finds held, and, unless WithKeyPattern is
// given too, the key of name is NAME/.lock, as `consul lock NAME` takes it
// (Defaults.KeyPattern does not apply). For an api.Lock on a key of your
// own, K, pass WithKeyPattern("%s") and the name K. The lock is exclusive
// and a holder's value is still the lock's Value; the other side's value is
// its own. For every constructor; a Locker built with it refuses Semaphore,
// whose slots consul/api's Semaphore (one key with a JSON list of holders)
// cannot share.
func WithConsulAPILayout() Option {
	return Option{"WithConsulAPILayout", forAll, func(s *settings) { s.apiLayout = true }}
}

// consulAPIKeyPattern is the key `consul lock PREFIX` locks: PREFIX/.lock.
const consulAPIKeyPattern = "%s/.lock"

// keyFlags are the flags every key a lock takes is marked with.
func (s *settings) keyFlags() uint64 {
	if s.apiLayout {
		return api.LockFlagValue
	}
	return 0
}

// WithObserver sets the Observer that receives the lock's events. For every
// constructor.
func WithObserver(o Observer) Option {
	return Option{"WithObserver", forAll, func(s *settings) { s.Observer = o }}
}

// WithKeyPattern sets the pattern that turns the lock's name into a key.
// For every constructor.
func WithKeyPattern(pattern string) Option {
	return Option{"WithKeyPattern", forAll, func(s *settings) { s.KeyPattern = pattern }}
}

// WithValue sets the function that produces the value stored under the key.
// For NewEphemeralLock and NewLocker (its locks and its semaphores' slots);
// an Election stores the value given to Campaign.
func WithValue(fn func() []byte) Option {
	return Option{"WithValue", forLock | forLocker, func(s *settings) { s.Value = fn }}
}

// newSettings is Defaults with opts applied for constructor b, validated.
func newSettings(b builder, opts []Option) (settings, error) {
	s := settings{Config: Defaults, given: map[string]bool{}}
	for _, opt := range opts {
		switch {
		case opt.apply == nil:
			return s, fmt.Errorf("%w: a zero Option: build options with the With functions", ErrInvalidOption)
		case opt.to&b == 0:
			return s, fmt.Errorf("%w: %s does not apply to %s (it applies to %s)", ErrInvalidOption, opt.name, b, opt.to)
		}
		opt.apply(&s)
		s.given[opt.name] = true
	}
	if s.Value == nil {
		s.Value = DefaultValue
	}
	if s.apiLayout && !s.given["WithKeyPattern"] {
		s.KeyPattern = consulAPIKeyPattern
	}
	if b == forLocker && s.renew && s.given["WithLockTimeout"] {
		return s, fmt.Errorf("%w: WithLockTimeout with WithRenewal on NewLocker: renewed leases have no maximum lifespan; WithSessionTTL bounds how long a dead process keeps them", ErrInvalidOption)
	}
	return s, s.validate()
}

// validate names the first setting that is out of range.
func (s *settings) validate() error {
	switch {
	case s.Client == nil:
		return fmt.Errorf("%w: no Consul client: pass WithClient or set Defaults.Client", ErrInvalidOption)
	case s.AcquireTimeout < 0:
		return fmt.Errorf("%w: AcquireTimeout %v is negative", ErrInvalidOption, s.AcquireTimeout)
	case s.LockTimeout < MinLockTimeout || s.LockTimeout > MaxLockTimeout:
		return fmt.Errorf("%w: LockTimeout %v outside [%v, %v], the session TTLs Consul accepts",
			ErrInvalidOption, s.LockTimeout, MinLockTimeout, MaxLockTimeout)
	case s.LockDelay < 0 || s.LockDelay > MaxLockDelay:
		return fmt.Errorf("%w: LockDelay %v outside [0s, %v]", ErrInvalidOption, s.LockDelay, MaxLockDelay)
	case s.sessionTTL != 0 && (s.sessionTTL < MinLockTimeout || s.sessionTTL > MaxLockTimeout):
		return fmt.Errorf("%w: SessionTTL %v outside [%v, %v], the session TTLs Consul accepts",
			ErrInvalidOption, s.sessionTTL, MinLockTimeout, MaxLockTimeout)
	}
	return validatePattern(s.KeyPattern)
}

// defaultSessionTTL is a Locker's session TTL when WithSessionTTL is not given.
const defaultSessionTTL = 15 * time.Second

func (s *settings) lockerTTL() time.Duration {
	if s.sessionTTL == 0 {
		return defaultSessionTTL
	}
	return s.sessionTTL
}

// conn is the client and token of the settings.
func (s *settings) conn() conn { return conn{s.Client, s.Token} }

// keyOf is the key of a lock's name, or an error wrapping ErrInvalidKey.
func (s *settings) keyOf(name string) (string, error) { return lockKey(s.KeyPattern, name) }
