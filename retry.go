package consullock

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Bounds of the jittered exponential backoff between retries of a call that
// failed for a reason that passes: a Consul leader election, an overloaded or
// restarting agent, a dropped connection.
const (
	minBackoff = 20 * time.Millisecond
	maxBackoff = time.Second
)

// backoff is a jittered exponential backoff between minBackoff and
// maxBackoff. The zero value starts at the bottom.
type backoff struct{ next time.Duration }

// step returns the next pause: half fixed, half random, so that waiters
// spread out.
func (b *backoff) step() time.Duration {
	b.next = min(max(2*b.next, minBackoff), maxBackoff)
	return b.next/2 + rand.N(b.next/2+1)
}

// wait sleeps for the next step, but not past deadline. It returns false,
// without sleeping, when the step would end past the deadline.
func (b *backoff) wait(ctx context.Context, deadline time.Time) (bool, error) {
	d := b.step()
	if time.Until(deadline) < d {
		return false, nil
	}
	return true, sleep(ctx, d)
}

// retry calls fn until it succeeds, fails for good, ctx ends, or the
// deadline leaves no room for another attempt; it returns fn's last error.
// This is the one rule for passing failures: every call to Consul that
// may be retried goes through it.
func retry(ctx context.Context, deadline time.Time, fn func() error) error {
	var b backoff
	for {
		err := fn()
		if !transient(err) || ctx.Err() != nil {
			return err
		}
		if ok, serr := b.wait(ctx, deadline); !ok || serr != nil {
			return errors.Join(err, serr)
		}
	}
}

// sleep waits d, or returns ctx's cause when ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// deadlineAfter is time.Now().Add(d) without overflow for huge timeouts.
func deadlineAfter(d time.Duration) time.Time {
	const century = 100 * 365 * 24 * time.Hour
	return time.Now().Add(min(d, century))
}
