package consullock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/consullock/consullock/internal/consultest"
)

// Keys taken together with a session that ends just before they are
// registered give no lease at all: AcquireAll keeps the local turns of every
// key, takes the set again with a new session, and excludes everyone else
// from each key until it releases them. (A lease registered alone would have
// been ended with the session, and passed on a turn AcquireAll still used.)
func TestRegisterAllIsAllOrNothing(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lk, err := NewLocker(WithClient(c), WithAcquireTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	keys := []string{"locks/ephemeral/" + t.Name() + "/a", "locks/ephemeral/" + t.Name() + "/b"}
	deadline := time.Now().Add(10 * time.Second)
	slots := map[string]*keySlot{}
	for _, k := range keys {
		if slots[k], err = lk.takeTurn(ctx, k, deadline); err != nil {
			t.Fatal(err)
		}
	}
	s, err := lk.session(ctx, deadline)
	if err != nil {
		t.Fatal(err)
	}
	tokens, _, err := takeKeys(ctx, lk.conn, keys, lk.cfg.Value(), s.id, deadline)
	if err != nil || tokens == nil {
		t.Fatalf("take %q: tokens %v, %v", keys, tokens, err)
	}
	s.end(errors.New("the session ended"))
	destroySession(ctx, lk.conn, s.id) // as Consul invalidating it would: the keys are freed

	if leases := lk.registerAll(s, keys, slots, tokens, time.Now()); leases != nil {
		t.Fatal("leases registered with a session that had ended")
	}
	for k, slot := range slots {
		if len(slot.turn) != 1 || slot.refs != 1 {
			t.Fatalf("%s: turn taken %d, refs %d after the failed registration, want the caller's turn kept", k, len(slot.turn), slot.refs)
		}
	}
	leases, err := lk.contendAll(ctx, keys, slots, deadline, new(int))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := lk.Acquire(ctx, k[len("locks/ephemeral/"):]); !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("another Acquire of %s while AcquireAll holds it: %v, want ErrNotAcquired", k, err)
		}
	}
	for _, l := range leases {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
