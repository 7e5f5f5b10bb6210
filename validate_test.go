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
