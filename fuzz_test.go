package consullock_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// FuzzLockName checks the name validation: a name is either refused with
// ErrInvalidKey, or gives a key that Consul stores as given and that no
// path-cleaning client can turn into another lock's key.
func FuzzLockName(f *testing.F) {
	for _, seed := range []string{"a", "my/special/key", "", "/a", "a/", "a//b", "../x", "a/./b", "a b", "a\x00", "\xff", "ключ/键", "a%2Fb", "a?b#c"} {
		f.Add(seed)
	}
	client := &api.Client{} // never used: building a lock talks to no one
	f.Fuzz(func(t *testing.T, name string) {
		l, err := consullock.NewEphemeralLock(name, consullock.WithClient(client))
		if err != nil {
			if !errors.Is(err, consullock.ErrInvalidKey) {
				t.Fatalf("name %q refused without ErrInvalidKey: %v", name, err)
			}
			return
		}
		key := l.Key()
		if key != "locks/ephemeral/"+name || !utf8.ValidString(key) || len(key) > 512 {
			t.Fatalf("name %q accepted as key %q", name, key)
		}
		for _, seg := range strings.Split(key, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("name %q accepted with segment %q", name, seg)
			}
		}
		for _, r := range key {
			if unicode.IsSpace(r) || !unicode.IsPrint(r) {
				t.Fatalf("name %q accepted with rune %q", name, r)
			}
		}
	})
}

// FuzzParseHolder checks the decoding of lock values that other clients
// wrote: it never panics, and what it decodes re-encodes to the same fields.
func FuzzParseHolder(f *testing.F) {
	f.Add([]byte(consullock.DefaultValue()))
	f.Add([]byte(`{"locked_at": "2016-01-01 12:00:00.123456"}`))
	f.Add([]byte(`{"locked_at": 5, "pid": "x"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, value []byte) {
		h, err := consullock.ParseHolder(value)
		if err != nil {
			return
		}
		b, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		again, err := consullock.ParseHolder(b)
		if err != nil || again != h {
			t.Fatalf("%q decoded to %+v, which re-encodes to %q and decodes to %+v (%v)", value, h, b, again, err)
		}
	})
}
