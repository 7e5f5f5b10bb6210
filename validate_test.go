package consullock_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Bad input is refused when the lock is built, with an error that names the
// problem, and nothing reaches Consul.
func TestBadInputIsRefusedBeforeConsul(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	prefix := lockName(t, "")
	cases := []struct {
		name    string
		lock    string
		opts    []consullock.Option
		want    error
		mention string
	}{
		{"empty name", "", nil, consullock.ErrInvalidKey, "empty"},
		{"leading slash", "/" + prefix + "a", nil, consullock.ErrInvalidKey, "empty segment"},
		{"trailing slash", prefix + "a/", nil, consullock.ErrInvalidKey, "empty segment"},
		{"double slash", prefix + "a//b", nil, consullock.ErrInvalidKey, "empty segment"},
		{"dot dot", prefix + "../../other", nil, consullock.ErrInvalidKey, `".."`},
		{"dot", prefix + "./a", nil, consullock.ErrInvalidKey, `"."`},
		{"space", prefix + "a b", nil, consullock.ErrInvalidKey, "whitespace"},
		{"tab", prefix + "a\tb", nil, consullock.ErrInvalidKey, "whitespace"},
		{"newline", prefix + "a\nb", nil, consullock.ErrInvalidKey, "whitespace"},
		{"NUL", prefix + "a\x00b", nil, consullock.ErrInvalidKey, "control"},
		{"DEL", prefix + "a\x7fb", nil, consullock.ErrInvalidKey, "control"},
		{"invalid UTF-8", prefix + "a\xffb", nil, consullock.ErrInvalidKey, "UTF-8"},
		{"too long", prefix + strings.Repeat("x", 600), nil, consullock.ErrInvalidKey, "longer than"},
		{"lock timeout too short", prefix + "a", []consullock.Option{consullock.WithLockTimeout(9 * time.Second)}, consullock.ErrInvalidOption, "LockTimeout 9s"},
		{"lock timeout zero", prefix + "a", []consullock.Option{consullock.WithLockTimeout(0)}, consullock.ErrInvalidOption, "LockTimeout 0s"},
		{"lock timeout too long", prefix + "a", []consullock.Option{consullock.WithLockTimeout(25 * time.Hour)}, consullock.ErrInvalidOption, "LockTimeout 25h0m0s"},
		{"negative acquire timeout", prefix + "a", []consullock.Option{consullock.WithAcquireTimeout(-time.Second)}, consullock.ErrInvalidOption, "AcquireTimeout -1s"},
		{"negative lock delay", prefix + "a", []consullock.Option{consullock.WithLockDelay(-time.Second)}, consullock.ErrInvalidOption, "LockDelay -1s"},
		{"lock delay over Consul's cap", prefix + "a", []consullock.Option{consullock.WithLockDelay(61 * time.Second)}, consullock.ErrInvalidOption, "LockDelay 1m1s"},
		{"pattern without %s", prefix + "a", []consullock.Option{consullock.WithKeyPattern("locks/x")}, consullock.ErrInvalidOption, "KeyPattern"},
		{"pattern with two verbs", prefix + "a", []consullock.Option{consullock.WithKeyPattern("locks/%s/%d")}, consullock.ErrInvalidOption, "KeyPattern"},
		{"pattern with leading slash", prefix + "a", []consullock.Option{consullock.WithKeyPattern("/locks/%s")}, consullock.ErrInvalidKey, "empty segment"},
		{"no client", prefix + "a", []consullock.Option{consullock.WithClient(nil)}, consullock.ErrInvalidOption, "no Consul client"},
	}
	for _, tc := range cases {
		opts := append([]consullock.Option{consullock.WithClient(c)}, tc.opts...)
		l, err := consullock.NewEphemeralLock(tc.lock, opts...)
		if l != nil || !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: NewEphemeralLock(%q) = (%v, %v), want %v naming %q", tc.name, tc.lock, l, err, tc.want, tc.mention)
		}
	}
	assertNothingWritten(t, c, "locks/ephemeral/"+prefix)
}

// assertNothingWritten checks that Consul has no key under prefix and no
// session of consullock's for one.
func assertNothingWritten(t *testing.T, c *api.Client, prefix string) {
	t.Helper()
	keys, _, err := c.KV().Keys(prefix, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("keys written for bad input: %q", keys)
	}
	sessions, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		if strings.Contains(s.Name, prefix) {
			t.Errorf("session %s (%s) created for bad input", s.ID, s.Name)
		}
	}
}

// Defaults is what a lock starts from: a client set there serves every lock
// built without WithClient, and options override it for one lock only.
// Not parallel: it changes Defaults.
func TestDefaults(t *testing.T) {
	c := consultest.Client(t)
	saved := consullock.Defaults
	t.Cleanup(func() { consullock.Defaults = saved })

	if _, err := consullock.NewEphemeralLock(lockName(t, "k")); !errors.Is(err, consullock.ErrInvalidOption) {
		t.Fatalf("no client anywhere: %v, want ErrInvalidOption", err)
	}
	if saved.LockTimeout != 180*time.Second || saved.AcquireTimeout != 0 || saved.KeyPattern != "locks/ephemeral/%s" || saved.Value == nil {
		t.Fatalf("Defaults = %+v, want python-consul-lock's defaults", saved)
	}

	consullock.Defaults.Client = c
	consullock.Defaults.KeyPattern = "locks/defaults-test/%s"
	l, err := consullock.NewEphemeralLock(lockName(t, "k"), consullock.WithLockTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	releaseAtEnd(t, l)
	if !strings.HasPrefix(l.Key(), "locks/defaults-test/") {
		t.Fatalf("key %q does not follow Defaults.KeyPattern", l.Key())
	}
	if err := l.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	info, _, err := c.Session().Info(l.Session(), nil)
	if err != nil || info == nil {
		t.Fatalf("session info: %v", err)
	}
	if info.TTL != "20s" || info.Behavior != api.SessionBehaviorDelete {
		t.Fatalf("session TTL %q behavior %q, want 20s and delete", info.TTL, info.Behavior)
	}
}

// Every option applies to what it is given to, or is refused with
// ErrInvalidOption naming it: none is silently ignored.
func TestOptionsApplyOrAreRefused(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	lock := func(opts ...consullock.Option) error {
		_, err := consullock.NewEphemeralLock(name, append(opts, consullock.WithClient(c))...)
		return err
	}
	locker := func(opts ...consullock.Option) error {
		_, err := consullock.NewLocker(append(opts, consullock.WithClient(c))...)
		return err
	}
	election := func(opts ...consullock.Option) error {
		_, err := consullock.NewElection(name, append(opts, consullock.WithClient(c))...)
		return err
	}
	for _, tc := range []struct {
		what    string
		err     error
		mention string
	}{
		{"WithSessionTTL on NewEphemeralLock", lock(consullock.WithSessionTTL(20 * time.Second)), "WithSessionTTL does not apply to NewEphemeralLock"},
		{"WithFairQueueing on NewEphemeralLock", lock(consullock.WithFairQueueing()), "WithFairQueueing does not apply"},
		{"WithReentrancy on NewEphemeralLock", lock(consullock.WithReentrancy()), "WithReentrancy does not apply"},
		{"WithSessionTTL on NewElection", election(consullock.WithSessionTTL(20 * time.Second)), "WithSessionTTL does not apply to NewElection"},
		{"WithAcquireTimeout on NewElection", election(consullock.WithAcquireTimeout(time.Second)), "WithAcquireTimeout does not apply to NewElection"},
		{"WithValue on NewElection", election(consullock.WithValue(nil)), "WithValue does not apply to NewElection"},
		{"WithRenewal and WithLockTimeout on NewLocker", locker(consullock.WithRenewal(), consullock.WithLockTimeout(time.Minute)), "WithLockTimeout with WithRenewal"},
		{"a zero Option", locker(consullock.Option{}), "zero Option"},
	} {
		if !errors.Is(tc.err, consullock.ErrInvalidOption) || !strings.Contains(tc.err.Error(), tc.mention) {
			t.Errorf("%s: %v, want ErrInvalidOption naming %q", tc.what, tc.err, tc.mention)
		}
	}

	fair := newLocker(t, c, consullock.WithFairQueueing())
	if _, err := fair.AcquireAll(t.Context(), lockName(t, "a"), lockName(t, "b")); !errors.Is(err, consullock.ErrInvalidOption) {
		t.Errorf("AcquireAll on a fair Locker: %v, want ErrInvalidOption", err)
	}
	if _, err := fair.Semaphore(lockName(t, "sem"), 2); !errors.Is(err, consullock.ErrInvalidOption) {
		t.Errorf("Semaphore on a fair Locker: %v, want ErrInvalidOption", err)
	}
	assertNothingWritten(t, c, "locks/ephemeral/"+lockName(t, ""))

	// WithValue applies to a Semaphore's slots as to the Locker's locks.
	valued := newLocker(t, c, consullock.WithValue(func() []byte { return []byte("encoder-7") }))
	sem, err := valued.Semaphore(lockName(t, "sem"), 2)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := sem.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(t.Context())
	pair, _, err := c.KV().Get(lease.Key(), nil)
	if err != nil || pair == nil || string(pair.Value) != "encoder-7" {
		t.Fatalf("semaphore slot %+v (%v), want the Locker's value", pair, err)
	}
}

// WithRenewal on a Locker lifts its leases' maximum lifespan: a renewed
// lease outlives LockTimeout, which ends a lease of a Locker without it.
// Not parallel while it sets Defaults.LockTimeout to build its Lockers.
func TestLockerWithRenewalHasNoMaximumLifespan(t *testing.T) {
	c := consultest.Client(t)
	saved := consullock.Defaults
	consullock.Defaults.LockTimeout = consullock.MinLockTimeout
	renewed := newLocker(t, c, consullock.WithRenewal())
	bounded := newLocker(t, c)
	consullock.Defaults = saved
	t.Parallel()
	ctx := t.Context()
	r, err := renewed.Acquire(ctx, lockName(t, "renewed"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bounded.Acquire(ctx, lockName(t, "bounded"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Lost():
	case <-time.After(consullock.MinLockTimeout + 2*time.Second):
		t.Fatal("a lease without renewal outlived its LockTimeout")
	}
	if err := r.Err(); err != nil {
		t.Fatalf("the renewed lease was lost at the LockTimeout: %v", err)
	}
	if holderSession(t, c, r.Key()) != r.Session() {
		t.Fatal("the renewed lease's key is no longer held")
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// A lock value too large for the transaction that takes the key is refused
// before anything is written: no session, no key.
func TestValueTooLargeWritesNothing(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	big := func() []byte { return make([]byte, 400*1024) }
	l := newLock(t, c, lockName(t, "k"), consullock.WithValue(big))
	if err := l.Acquire(t.Context()); !errors.Is(err, consullock.ErrInvalidOption) || !strings.Contains(err.Error(), "txn_max_req_len") {
		t.Fatalf("Acquire with a 400 KiB value: %v, want ErrInvalidOption naming txn_max_req_len", err)
	}
	lease, err := newLocker(t, c, consullock.WithValue(big)).Acquire(t.Context(), lockName(t, "k"))
	if lease != nil || !errors.Is(err, consullock.ErrInvalidOption) {
		t.Fatalf("Locker.Acquire with a 400 KiB value: %v, want ErrInvalidOption", err)
	}
	assertNothingWritten(t, c, "locks/ephemeral/"+lockName(t, ""))
}
