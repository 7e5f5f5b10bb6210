package consullock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// cleanupTimeout bounds the calls that give a session back after the caller's
// context ended, or while Consul is failing: they must run, but not forever.
const cleanupTimeout = 10 * time.Second

// errSessionGone reports that Consul no longer knows a session.
var errSessionGone = errors.New("session invalidated")

// sessionSpec is what a lock asks of its Consul session.
type sessionSpec struct {
	key       string
	ttl       time.Duration
	lockDelay time.Duration
}

// createSession creates a session whose invalidation deletes the keys it
// holds, as python-consul-lock's sessions do, retrying transient failures
// until deadline.
//
// A create whose answer was lost may still have created a session. Each
// session is named with a random suffix, so that such strays can be found and
// destroyed at once rather than left to their TTL.
//
// It returns when the successful request was sent: Consul starts the TTL no
// earlier than that.
func createSession(ctx context.Context, c conn, spec sessionSpec, deadline time.Time) (id string, sent time.Time, err error) {
	name := "consullock: " + spec.key + " " + nonce()
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
		destroyStrays(ctx, c, name, id)
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("create session: %w", explain(err))
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
		if _, err := c.c.Raw().Write("/v1/session/create", body, &out, c.write(ctx)); err != nil {
			return "", err
		}
		if out.ID == "" {
			return "", errors.New("Consul returned no session ID")
		}
		return out.ID, nil
	}
	return writeDetached(ctx, create, func(id string) {
		dctx, cancel := detached(context.Background())
		defer cancel()
		destroySession(dctx, c, id)
	})
}

// destroyStrays destroys the sessions named name other than keep: creates
// that succeeded although their caller saw them fail. Best effort: a stray
// it cannot destroy holds no key and expires with its TTL.
func destroyStrays(ctx context.Context, c conn, name, keep string) {
	ctx, cancel := detached(ctx)
	defer cancel()
	var all []*api.SessionEntry
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() (err error) {
		all, _, err = c.c.Session().List(c.query(ctx, api.QueryOptions{RequireConsistent: true}))
		return err
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
// retrying transient failures while ctx and cleanupTimeout allow.
// Destroying a session that no longer exists succeeds.
func destroySession(ctx context.Context, c conn, id string) error {
	err := retry(ctx, time.Now().Add(cleanupTimeout), func() error {
		_, err := c.c.Session().Destroy(id, c.write(ctx))
		return err
	})
	if err != nil {
		return fmt.Errorf("destroy session %s: %w", id, explain(err))
	}
	return nil
}

// renewSession renews the session once, retrying transient failures until
// deadline. It returns errSessionGone when Consul no longer knows it.
func renewSession(ctx context.Context, c conn, id string, deadline time.Time, o Observer) error {
	return retry(ctx, deadline, func() error {
		entry, _, err := c.c.Session().Renew(id, c.write(ctx))
		if err == nil && entry == nil {
			err = errSessionGone
		}
		if err != nil && o != nil && ctx.Err() == nil {
			o.RenewFailed(RenewEvent{Session: id, Err: err})
		}
		return err
	})
}

// detached returns a context that outlives ctx's cancellation by at most
// cleanupTimeout, for giving back what a cancelled call had taken.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

func nonce() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
