// Package metriclabel holds the label helpers that consullock's metrics
// adapters (contrib/prometheus, contrib/otel) share, so that both label
// their series the same way.
package metriclabel

import (
	"errors"
	"strings"

	"github.com/consullock/consullock"
)

// Prefix returns the first segments of key ("/"-separated; at least one),
// the whole key when it has no more: a label whose number of values stays
// bounded when keys name many things.
func Prefix(key string, segments int) string {
	segments = max(segments, 1)
	parts := strings.SplitN(key, "/", segments+1)
	return strings.Join(parts[:min(len(parts), segments)], "/")
}

// Result names how an acquire ended: "acquired", "timeout" (the error wraps
// consullock.ErrNotAcquired) or "error".
func Result(err error) string {
	switch {
	case err == nil:
		return "acquired"
	case errors.Is(err, consullock.ErrNotAcquired):
		return "timeout"
	default:
		return "error"
	}
}
