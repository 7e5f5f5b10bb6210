package consullock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consultest"
)

// Keys taken together with a session that ends just before they are
// registered give no lease at all: the caller keeps the local turns of
// every key, takes the set again with a new session, and excludes everyone
// else from each key until it releases them. (A lease registered alone
// would have been ended with the session, and passed on a turn the caller
// still used.)
func TestRegisterIsAllOrNothing(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lk, err := NewLocker(WithClient(c), WithAcquireTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	keys := []string{"locks/ephemeral/" + t.Name() + "/a", "locks/ephemeral/" + t.Name() + "/b"}
	a := lk.attempt(keys)
	a.deadline = time.Now().Add(10 * time.Second)
	slots := make([]*keySlot, len(keys))
	for i, k := range keys {
		if slots[i], err = lk.takeTurn(ctx, k, a.deadline); err != nil {
			t.Fatal(err)
		}
	}
	s, tokens, err := a.contend(ctx)
	if err != nil {
		t.Fatalf("take %q: %v", keys, err)
	}
	if err := s.destroy(ctx, errors.New("the session ended")); err != nil { // as Consul invalidating it would: the keys are freed
		t.Fatal(err)
	}
	if leases := lk.register(s, a, slots, tokens); leases != nil {
		t.Fatal("leases registered with a session that had ended")
	}
	for i, slot := range slots {
		if len(slot.turn) != 1 || slot.refs != 1 {
			t.Fatalf("%s: turn taken %d, refs %d after the failed registration, want the caller's turn kept", keys[i], len(slot.turn), slot.refs)
		}
	}
	s, tokens, err = a.contend(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leases := lk.register(s, a, slots, tokens)
	if leases == nil {
		t.Fatal("no leases with a live session")
	}
	for _, k := range keys {
		if _, err := lk.Acquire(ctx, k[len("locks/ephemeral/"):]); !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("another Acquire of %s while the set is held: %v, want ErrNotAcquired", k, err)
		}
	}
	for _, l := range leases {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A take abandoned by its caller that Consul applied after another
// goroutine of the Locker took the key with the same session writes over
// that goroutine's take: its lease is no longer as it took the key, so it is
// lost, and it gives the key back itself.
func TestLateTakeEndsTheLease(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lk, err := NewLocker(WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	lease, err := lk.Acquire(ctx, t.Name()+"/k")
	if err != nil {
		t.Fatal(err)
	}
	// The abandoned write lands now: the same session takes the key again.
	res, _, err := take(ctx, lk.conn, takeSpec{keys: []string{lease.Key()}, session: lease.Session()}, time.Now().Add(5*time.Second))
	if err != nil || !res.taken() {
		t.Fatalf("late take: %+v, %v", res, err)
	}
	select {
	case <-lease.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the lease did not see the late take")
	}
	if err := lease.Err(); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Err = %v, want ErrLockLost", err)
	}
	consultest.Eventually(t, 5*time.Second, "the key given back", func() bool {
		pair, _, err := c.KV().Get(lease.Key(), &api.QueryOptions{RequireConsistent: true})
		return err == nil && pair == nil
	})
}
