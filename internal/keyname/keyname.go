// Package keyname holds the rules for lock keys that the library and the
// command line share: how a name and a pattern make a key, and which keys
// are safe to use. Its errors are plain reasons; the library wraps them in
// its sentinels.
package keyname

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLen keeps keys well inside what Consul, HTTP proxies and the Raft log
// handle comfortably.
const MaxLen = 512

// CheckPattern accepts patterns with exactly one %s and no other verb, so
// formatting can neither fail nor produce a "%!" artefact.
func CheckPattern(pattern string) error {
	plain := strings.ReplaceAll(pattern, "%%", "")
	if strings.Count(plain, "%") != 1 || !strings.Contains(plain, "%s") {
		return fmt.Errorf("KeyPattern %q must contain exactly one %%s and no other verb", pattern)
	}
	return nil
}

// Format formats name with pattern (checked by CheckPattern) and checks
// that the result is a key Consul stores as given: non-empty segments
// separated by single slashes, printable UTF-8 without spaces, and no "."
// or ".." segment that a proxy or a path-cleaning client could rewrite into
// another lock's key.
func Format(pattern, name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	key := fmt.Sprintf(pattern, name)
	if err := Check(key); err != nil {
		return "", fmt.Errorf("name %q gives key %q: %w", name, key, err)
	}
	return key, nil
}

// Check returns why key is not safe to use, or nil.
func Check(key string) error {
	if len(key) > MaxLen {
		return fmt.Errorf("longer than %d bytes", MaxLen)
	}
	if !utf8.ValidString(key) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range key {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("contains whitespace or control character %q", r)
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return errors.New("has an empty segment (a leading, trailing or doubled /)")
		case ".", "..":
			return fmt.Errorf("has a %q segment", seg)
		}
	}
	return nil
}
