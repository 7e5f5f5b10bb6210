package consullock_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consultest"
)

// Acquires cancelled at every moment of their requests (a context that ends
// after 0 to 3 ms) leave no session and no key behind, even when the
// cancelled request reached Consul and was applied after its caller gave up:
// such a write is undone as soon as its answer arrives.
func TestCancelledAcquiresLeaveNothing(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "k")
	lk := newLocker(t, c)
	cancelled := 0
	for range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(3000))*time.Microsecond)
		l := newLock(t, c, name)
		err := l.Acquire(ctx)
		switch {
		case err == nil:
			if err := l.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
		case errors.Is(err, context.DeadlineExceeded):
			cancelled++
		default:
			t.Fatal(err)
		}
		lease, err := lk.Acquire(ctx, name+"-locker")
		switch {
		case err == nil:
			if err := lease.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
		case errors.Is(err, context.DeadlineExceeded):
			cancelled++
		default:
			t.Fatal(err)
		}
		cancel()
	}
	t.Logf("%d of 600 acquires cancelled", cancelled)
	if cancelled == 0 {
		t.Fatal("no acquire was cancelled: the test checked nothing")
	}
	lkSession := ""
	if l, err := lk.Acquire(context.Background(), name+"-probe"); err == nil {
		lkSession = l.Session()
		l.Release(context.Background())
	}
	consultest.Eventually(t, 5*time.Second, "no session but the Locker's and no key left", func() bool {
		sessions, _, err := c.Session().List(nil)
		if err != nil {
			return false
		}
		for _, s := range sessions {
			if strings.Contains(s.Name, lockName(t, "")) && s.ID != lkSession {
				return false
			}
		}
		keys, _, err := c.KV().Keys("locks/ephemeral/"+lockName(t, ""), "", &api.QueryOptions{RequireConsistent: true})
		return err == nil && len(keys) == 0
	})
}
