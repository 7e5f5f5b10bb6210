package metriclabel

import (
	"errors"
	"fmt"
	"testing"

	"github.com/consullock/consullock"
)

// The labels keep a bounded prefix and name the result.
func TestUnitPrefixAndResult(t *testing.T) {
	for _, tc := range []struct {
		key      string
		segments int
		want     string
	}{
		{"locks/ephemeral/billing/invoice-1", 3, "locks/ephemeral/billing"},
		{"locks/ephemeral/billing", 3, "locks/ephemeral/billing"},
		{"locks/x", 3, "locks/x"},
		{"a/b/c", 1, "a"},
		{"a/b/c", 0, "a"},
		{"a/b/c", -1, "a"},
	} {
		if got := Prefix(tc.key, tc.segments); got != tc.want {
			t.Errorf("Prefix(%q, %d) = %q, want %q", tc.key, tc.segments, got, tc.want)
		}
	}
	timeout := fmt.Errorf("wrapped: %w", consullock.ErrNotAcquired)
	for err, want := range map[error]string{nil: "acquired", timeout: "timeout", errors.New("boom"): "error"} {
		if got := Result(err); got != want {
			t.Errorf("Result(%v) = %q, want %q", err, got, want)
		}
	}
}
