package consullock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

const managementToken = "8c2c3a4e-6a55-4b6a-9f1c-5d1b2f0e7a11"

// newToken creates an ACL token with the given rules and returns its secret.
func newToken(t *testing.T, admin *api.Client, name, rules string) string {
	t.Helper()
	policy, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("create policy %s: %v", name, err)
	}
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatalf("create token for %s: %v", name, err)
	}
	return tok.SecretID
}

func anonymousClient(t *testing.T, a *consulagent.Agent, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Token = a.HTTPAddr(), token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// Against an agent with ACLs on and default deny, a lock works with a token
// from the client's config or from WithToken; a token without session:write
// or key:write gets ErrPermissionDenied naming the permission, and nothing is
// left behind.
func TestACLs(t *testing.T) {
	t.Parallel()
	agent := consultest.DevAgent(t, func(o *consulagent.Options) { o.ACLToken = managementToken })
	admin := consultest.ClientOf(t, agent)
	ctx := context.Background()
	full := newToken(t, admin, "locks-rw", `key_prefix "locks/" { policy = "write" }
session_prefix "" { policy = "write" }`)
	noSession := newToken(t, admin, "locks-no-session", `key_prefix "locks/" { policy = "write" }
session_prefix "" { policy = "read" }`)
	noKey := newToken(t, admin, "locks-no-key", `key_prefix "locks/" { policy = "read" }
session_prefix "" { policy = "write" }`)

	for _, tc := range []struct {
		name   string
		client *api.Client
		opts   []consullock.Option
	}{
		{"token in the client's config", anonymousClient(t, agent, full), nil},
		{"token per lock", anonymousClient(t, agent, ""), []consullock.Option{consullock.WithToken(full)}},
	} {
		l := newLock(t, tc.client, lockName(t, "k"), tc.opts...)
		if err := l.Hold(ctx, func(context.Context) error { return nil }); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}

	anon := anonymousClient(t, agent, "")
	for _, tc := range []struct {
		name, token, missing string
	}{
		{"no session:write", noSession, "session:write"},
		{"no key:write", noKey, "key:write"},
		{"anonymous", "", "session:write"},
	} {
		l := newLock(t, anon, lockName(t, "k"), consullock.WithToken(tc.token))
		err := l.Acquire(ctx)
		if !errors.Is(err, consullock.ErrPermissionDenied) || !strings.Contains(err.Error(), tc.missing) {
			t.Errorf("%s: Acquire = %v, want ErrPermissionDenied naming %s", tc.name, err, tc.missing)
		}
	}
	// An observer whose token may not read the key gets the refusal once,
	// instead of retrying it for ever.
	e, err := consullock.NewElection(lockName(t, "leader"), consullock.WithClient(anon))
	if err != nil {
		t.Fatal(err)
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var observed []error
	for _, err := range e.Observe(octx) {
		observed = append(observed, err)
	}
	if octx.Err() != nil || len(observed) != 1 || !errors.Is(observed[0], consullock.ErrPermissionDenied) {
		t.Errorf("Observe without read permission yielded %v (context %v), want one ErrPermissionDenied, then the end", observed, octx.Err())
	}

	sessions, _, err := admin.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, _, err := admin.KV().Keys("locks/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 0 || len(keys) != 0 {
		t.Fatalf("left behind: %d sessions, keys %q", len(sessions), keys)
	}
}

// Against an HTTPS-only agent, a lock works through a client that verifies
// the agent's certificate against the test's CA; a client that does not trust
// that CA fails.
func TestTLS(t *testing.T) {
	t.Parallel()
	files := consultest.TLSFiles(t)
	agent := consultest.DevAgent(t, func(o *consulagent.Options) { o.TLS = files })
	ctx := context.Background()

	trusting := consultest.ClientOf(t, agent)
	l := newLock(t, trusting, lockName(t, "k"))
	if err := l.Hold(ctx, func(context.Context) error { return nil }); err != nil {
		t.Fatalf("lock over verified TLS: %v", err)
	}

	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Scheme = agent.HTTPAddr(), "https"
	untrusting, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	start := time.Now()
	err = newLock(t, untrusting, lockName(t, "k"), consullock.WithAcquireTimeout(10*time.Second)).Acquire(ctx)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Acquire through a client that does not trust the CA = %v, want a certificate error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a certificate error took %v to report: it must not be retried as if it would pass", took)
	}
}
