package consullock

import (
	"fmt"

	"github.com/consullock/consullock/internal/keyname"
)

// validatePattern refuses a KeyPattern that does not have exactly one %s.
func validatePattern(pattern string) error {
	if err := keyname.CheckPattern(pattern); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return nil
}

// lockKey is the key that pattern makes of name, or why it is unsafe (see
// keyname.Format).
func lockKey(pattern, name string) (string, error) {
	key, err := keyname.Format(pattern, name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return key, nil
}

// validateKey returns a plain reason why key is unsafe, or nil.
func validateKey(key string) error { return keyname.Check(key) }
