package consullock

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// conn is a Consul client with the ACL token a lock uses on every call.
type conn struct {
	c     *api.Client
	token string // "" uses the client's own token
}

func (c conn) write(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{Token: c.token}).WithContext(ctx)
}

func (c conn) query(ctx context.Context, q api.QueryOptions) *api.QueryOptions {
	q.Token = c.token
	return q.WithContext(ctx)
}

// explain wraps a Consul refusal of the lock's token in ErrPermissionDenied,
// keeping Consul's words, which name the permission that is missing.
func explain(err error) error {
	var status api.StatusError
	switch {
	case errors.As(err, &status) && status.Code == 403:
		return fmt.Errorf("%w: %s", ErrPermissionDenied, status.Body)
	case err != nil && (strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "ACL not found")):
		// Transactions report a refusal inside their results, without a code.
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return err
}
