package consullock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// cleanupTimeout bounds the calls that give a session back after the caller's
// context ended: they must still run, but not forever.
const cleanupTimeout = 10 * time.Second

// sessionSpec is what a lock asks of its Consul session.
type sessionSpec struct {
	name      string
	ttl       time.Duration
	lockDelay time.Duration
}

// createSession creates a session whose invalidation deletes the keys it
// holds, as python-consul-lock's sessions do.
//
// It writes the request itself because api.Session.Create drops a zero
// LockDelay, and Consul then applies its default of 15 s.
func createSession(ctx context.Context, c *api.Client, spec sessionSpec) (string, error) {
	body := map[string]any{
		"Name":      spec.name,
		"TTL":       spec.ttl.String(),
		"LockDelay": spec.lockDelay.String(),
		"Behavior":  api.SessionBehaviorDelete,
	}
	var out struct{ ID string }
	if _, err := c.Raw().Write("/v1/session/create", body, &out, writeOpts(ctx)); err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	if out.ID == "" {
		return "", fmt.Errorf("create session: Consul returned no session ID")
	}
	return out.ID, nil
}

// destroySession invalidates the session, which deletes every key it holds.
// Destroying a session that no longer exists succeeds.
func destroySession(ctx context.Context, c *api.Client, id string) error {
	if _, err := c.Session().Destroy(id, writeOpts(ctx)); err != nil {
		return fmt.Errorf("destroy session %s: %w", id, err)
	}
	return nil
}

// detached returns a context that outlives ctx's cancellation by at most
// cleanupTimeout, for giving back what a cancelled call had taken.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

func writeOpts(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

func queryOpts(ctx context.Context, q api.QueryOptions) *api.QueryOptions {
	return q.WithContext(ctx)
}
