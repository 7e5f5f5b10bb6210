package consullock

import (
	"fmt"
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

// Config holds the settings of a lock. A new lock starts from a copy of
// Defaults, then applies its options; the result is validated once, when the
// lock is built.
type Config struct {
	// Client talks to Consul. It must be set here or with WithClient.
	Client *api.Client

	// AcquireTimeout bounds how long Acquire waits for a lock that another
	// holder has. Zero means a single attempt, as in python-consul-lock.
	AcquireTimeout time.Duration

	// LockTimeout is the lock's maximum lifespan. For an EphemeralLock it is
	// the TTL of the Consul session that holds it: a holder that never
	// releases (a crash, a hang) loses the lock when Consul invalidates the
	// session, which Consul may do from LockTimeout after the session was
	// created or last renewed (a waiting lock renews it, so that is at most
	// LockTimeout/2 before the acquire) until about twice that; Lost fires
	// first. For a Locker's lease it is enforced by the Locker, from the
	// acquire. It must lie in [MinLockTimeout, MaxLockTimeout].
	LockTimeout time.Duration

	// LockDelay is how long Consul refuses the key to everyone after the
	// session holding it was invalidated (expired or destroyed by someone
	// else), so that a holder which has not yet noticed its loss is not
	// overlapped at once. A clean Release never imposes it. Zero is sent to
	// Consul as zero (the consul/api client would omit it and get 15 s).
	// It must lie in [0, MaxLockDelay].
	LockDelay time.Duration

	// Renew keeps the lock for as long as it is held: its session is renewed
	// every LockTimeout/2, and a renewal that fails for a passing reason is
	// retried until the local deadline (see EphemeralLock.Lost). LockTimeout
	// then bounds only how long a holder that died or was cut off from Consul
	// keeps the lock. Off by default: python-consul-lock's fixed maximum
	// lifespan.
	Renew bool

	// SessionTTL is the TTL of a Locker's shared session, which the Locker
	// renews every half of it: how soon Consul frees the locks of a process
	// that died or was cut off. Zero means 15 s; otherwise it must lie in
	// [MinLockTimeout, MaxLockTimeout]. EphemeralLock does not use it.
	SessionTTL time.Duration

	// Fair makes a Locker serve the waiters of every process in arrival
	// order (see queue.go): no waiter starves, and a release wakes one
	// waiter instead of all, for one more write per cycle. Local handoffs
	// are off in this mode, so a busy process cannot jump the queue.
	Fair bool

	// Reentrant lets a Locker's Acquire of a name whose lease the context
	// carries count one more hold instead of waiting (see ContextWithLease).
	// Off by default; an EphemeralLock, being single use, ignores it.
	Reentrant bool

	// Observer, when not nil, receives the lock's events (see Observer).
	Observer Observer

	// Token is the ACL token for this lock's calls; "" uses the client's.
	Token string

	// KeyPattern turns a lock's name into its Consul key. It must contain
	// exactly one %s, and no other verb.
	KeyPattern string

	// Value produces the value stored under the key while the lock is held.
	// Nil stores DefaultValue.
	Value func() []byte
}

// Defaults is the Config every new lock starts from, like python-consul-lock's
// defaults module. Set its fields once at start-up, before locks are built
// concurrently; it is the only package-level mutable state.
var Defaults = Config{
	LockTimeout: 180 * time.Second,
	KeyPattern:  "locks/ephemeral/%s",
	Value:       DefaultValue,
}

// Option changes one setting of a lock being built.
type Option func(*Config)

// WithClient sets the Consul client that the lock uses.
func WithClient(c *api.Client) Option { return func(cfg *Config) { cfg.Client = c } }

// WithAcquireTimeout sets how long Acquire waits for a held lock; zero means
// one attempt.
func WithAcquireTimeout(d time.Duration) Option {
	return func(cfg *Config) { cfg.AcquireTimeout = d }
}

// WithLockTimeout sets the lock's maximum lifespan (the session TTL).
func WithLockTimeout(d time.Duration) Option {
	return func(cfg *Config) { cfg.LockTimeout = d }
}

// WithLockDelay sets how long Consul keeps the key from everyone after the
// holder's session was invalidated.
func WithLockDelay(d time.Duration) Option {
	return func(cfg *Config) { cfg.LockDelay = d }
}

// WithRenewal keeps the lock until Release by renewing its session; see
// Config.Renew.
func WithRenewal() Option { return func(cfg *Config) { cfg.Renew = true } }

// WithToken sets the ACL token for the lock's calls to Consul, instead of
// the client's.
func WithToken(token string) Option { return func(cfg *Config) { cfg.Token = token } }

// WithSessionTTL sets the TTL of a Locker's shared session.
func WithSessionTTL(d time.Duration) Option { return func(cfg *Config) { cfg.SessionTTL = d } }

// WithFairQueueing makes a Locker serve waiters in arrival order; see
// Config.Fair.
func WithFairQueueing() Option { return func(cfg *Config) { cfg.Fair = true } }

// WithReentrancy makes a Locker reentrant; see Config.Reentrant.
func WithReentrancy() Option { return func(cfg *Config) { cfg.Reentrant = true } }

// WithObserver sets the Observer that receives the lock's events.
func WithObserver(o Observer) Option { return func(cfg *Config) { cfg.Observer = o } }

// WithKeyPattern sets the pattern that turns the lock's name into a key.
func WithKeyPattern(pattern string) Option {
	return func(cfg *Config) { cfg.KeyPattern = pattern }
}

// WithValue sets the function that produces the value stored under the key.
func WithValue(fn func() []byte) Option { return func(cfg *Config) { cfg.Value = fn } }

// validate names the first setting that is out of range.
func (c *Config) validate() error {
	switch {
	case c.Client == nil:
		return fmt.Errorf("%w: no Consul client: pass WithClient or set Defaults.Client", ErrInvalidOption)
	case c.AcquireTimeout < 0:
		return fmt.Errorf("%w: AcquireTimeout %v is negative", ErrInvalidOption, c.AcquireTimeout)
	case c.LockTimeout < MinLockTimeout || c.LockTimeout > MaxLockTimeout:
		return fmt.Errorf("%w: LockTimeout %v outside [%v, %v], the session TTLs Consul accepts",
			ErrInvalidOption, c.LockTimeout, MinLockTimeout, MaxLockTimeout)
	case c.LockDelay < 0 || c.LockDelay > MaxLockDelay:
		return fmt.Errorf("%w: LockDelay %v outside [0s, %v]", ErrInvalidOption, c.LockDelay, MaxLockDelay)
	}
	if c.SessionTTL != 0 && (c.SessionTTL < MinLockTimeout || c.SessionTTL > MaxLockTimeout) {
		return fmt.Errorf("%w: SessionTTL %v outside [%v, %v], the session TTLs Consul accepts",
			ErrInvalidOption, c.SessionTTL, MinLockTimeout, MaxLockTimeout)
	}
	return validatePattern(c.KeyPattern)
}

// defaultSessionTTL is a Locker's session TTL when Config.SessionTTL is 0.
const defaultSessionTTL = 15 * time.Second

func (c *Config) sessionTTL() time.Duration {
	if c.SessionTTL == 0 {
		return defaultSessionTTL
	}
	return c.SessionTTL
}

// newConfig is Defaults with opts applied and validated, Value defaulted.
func newConfig(opts []Option) (Config, error) {
	cfg := Defaults
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.Value == nil {
		cfg.Value = DefaultValue
	}
	return cfg, cfg.validate()
}

// newKeyConfig is newConfig for a lock on name, with its key.
func newKeyConfig(name string, opts []Option) (Config, string, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return cfg, "", err
	}
	key, err := lockKey(cfg.KeyPattern, name)
	return cfg, key, err
}
