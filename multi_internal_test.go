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
	tokens, _, err := takeKeys(ctx, lk.conn, keys, lk.cfg.Value(), s.id, deadline, nil)
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

// A take abandoned by its caller that Consul applied after another
// goroutine of the Locker took the key with the same session (so the key is
// at the abandoned write's index) is not undone under that goroutine's
// lease: the undo waits for the local turn, and deletes the key only once
// no lease of the Locker holds it.
func TestAbandonedTakeWaitsForTheTurn(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	lk, err := NewLocker(WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	name := t.Name() + "/k"
	lease, err := lk.Acquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// The abandoned write lands now: the same session takes the key again.
	stale, _, err := takeKey(ctx, lk.conn, lease.key, nil, lease.Session(), time.Now().Add(5*time.Second), nil)
	if err != nil || stale == 0 {
		t.Fatalf("stale take: %d, %v", stale, err)
	}
	undone := make(chan struct{})
	go func() {
		lk.giveBackAbandoned(lease.key)([]*api.KVPair{{ModifyIndex: stale}})
		close(undone)
	}()
	consultest.Eventually(t, 5*time.Second, "the undo waits for the turn", func() bool {
		lk.mu.Lock()
		defer lk.mu.Unlock()
		return lk.slots[lease.key] != nil && lk.slots[lease.key].refs == 2
	})
	if pair, _, err := c.KV().Get(lease.key, &api.QueryOptions{RequireConsistent: true}); err != nil || pair == nil || pair.Session != lease.Session() {
		t.Fatalf("the key was given back under a lease that holds it: %+v, %v", pair, err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-undone:
	case <-time.After(15 * time.Second):
		t.Fatal("the undo did not finish after the lease was released")
	}
	if pair, _, _ := c.KV().Get(lease.key, &api.QueryOptions{RequireConsistent: true}); pair != nil {
		t.Fatalf("key left after the release and the undo: %+v", pair)
	}
}
