package consullock

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxKeyLen keeps keys well inside what Consul, HTTP proxies and the Raft
// log handle comfortably.
const maxKeyLen = 512

// validatePattern accepts patterns with exactly one %s and no other verb, so
// formatting can neither fail nor produce a "%!" artefact.
func validatePattern(pattern string) error {
	verbs := strings.Count(strings.ReplaceAll(pattern, "%%", ""), "%")
	if verbs != 1 || !strings.Contains(strings.ReplaceAll(pattern, "%%", ""), "%s") {
		return fmt.Errorf("%w: KeyPattern %q must contain exactly one %%s and no other verb", ErrInvalidOption, pattern)
	}
	return nil
}

// lockKey formats name with pattern and checks that the result is a key
// Consul stores as given: non-empty segments separated by single slashes,
// printable UTF-8 without spaces, and no "." or ".." segment that a proxy or
// a path-cleaning client could rewrite into another lock's key.
func lockKey(pattern, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty name", ErrInvalidKey)
	}
	key := fmt.Sprintf(pattern, name)
	if err := validateKey(key); err != nil {
		return "", fmt.Errorf("%w: name %q gives key %q: %s", ErrInvalidKey, name, key, err)
	}
	return key, nil
}

// validateKey returns a plain reason; lockKey wraps it.
func validateKey(key string) error {
	if len(key) > maxKeyLen {
		return fmt.Errorf("longer than %d bytes", maxKeyLen)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("not valid UTF-8")
	}
	for _, r := range key {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("contains whitespace or control character %q", r)
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("has an empty segment (a leading, trailing or doubled /)")
		case ".", "..":
			return fmt.Errorf("has a %q segment", seg)
		}
	}
	return nil
}
