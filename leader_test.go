package consullock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// Three candidates campaign: one leads at a time, a resignation hands over
// to another, a lost term is noticed by its leader, and an observer sees
// each leader in turn.
func TestElection(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	name := lockName(t, "leader")
	newElection := func() *consullock.Election {
		e, err := consullock.NewElection(name, consullock.WithClient(c), consullock.WithLockTimeout(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	observer := newElection()
	if _, err := observer.Leader(ctx); !errors.Is(err, consullock.ErrNoLeader) {
		t.Fatalf("Leader before any campaign: %v, want ErrNoLeader", err)
	}
	seen := observe(ctx, t, observer)
	if first := <-seen; first.Session != "" {
		t.Fatalf("first observation %+v, want no leader", first)
	}

	terms := make(chan *consullock.Term, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			term, err := newElection().Campaign(ctx, []byte(fmt.Sprintf("candidate-%d", i)))
			if err != nil {
				if ctx.Err() == nil {
					t.Error(err)
				}
				return
			}
			terms <- term
		})
	}
	first := <-terms
	select {
	case extra := <-terms:
		t.Fatalf("two leaders at once: tokens %d and %d", first.Token(), extra.Token())
	case <-time.After(200 * time.Millisecond):
	}
	leader := nextLeader(t, seen)
	if leader.Token != first.Token() {
		t.Fatalf("observed leader %+v, want the first term (token %d)", leader, first.Token())
	}

	if err := first.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	second := <-terms
	if second.Token() <= first.Token() {
		t.Fatalf("second term token %d after %d", second.Token(), first.Token())
	}
	if l := nextLeader(t, seen); l.Token != second.Token() || string(l.Value) == string(leader.Value) {
		t.Fatalf("observed %+v after the resignation, want the second term (token %d) with another value", l, second.Token())
	}

	if _, err := c.Session().Destroy(second.Session(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("the leader did not learn within 2s that its session was destroyed")
	}
	third := <-terms
	if l := nextLeader(t, seen); l.Token != third.Token() {
		t.Fatalf("observed %+v, want the third term (token %d)", l, third.Token())
	}
	if err := third.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	second.Resign(ctx)
	cancel()
	wg.Wait()
}

// observe runs observer.Observe until ctx ends, and sends what it yields.
func observe(ctx context.Context, t *testing.T, observer *consullock.Election) <-chan consullock.Leader {
	seen := make(chan consullock.Leader, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for l, err := range observer.Observe(ctx) {
			if err != nil {
				t.Errorf("Observe: %v", err)
				return
			}
			select {
			case <-seen: // keep the latest only
			default:
			}
			seen <- l
		}
	}()
	t.Cleanup(func() { <-done })
	return seen
}

// nextLeader returns the next leader the observer sees, skipping the
// moments without one.
func nextLeader(t *testing.T, seen <-chan consullock.Leader) consullock.Leader {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l := <-seen:
			if l.Session != "" {
				return l
			}
		case <-deadline:
			t.Fatal("no leader observed within 5s")
		}
	}
}
