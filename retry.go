package consullock

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// Bounds of the jittered exponential backoff between retries of a call that
// failed for a reason that passes: a Consul leader election, an overloaded or
// restarting agent, a dropped connection.
const (
	minBackoff = 20 * time.Millisecond
	maxBackoff = time.Second
)

// transient reports whether err is worth retrying: the same call may succeed
// in a moment. Permission, validation and cancellation errors are not.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var status api.StatusError
	if errors.As(err, &status) {
		switch status.Code {
		case 429, 500, 502, 503, 504:
			return true
		}
		return false
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	// consul/api reports a failed transaction without its status code, and
	// a failed renewal without its body.
	msg := err.Error()
	for _, s := range []string{"No cluster leader", "leadership lost", "rpc error", "raft", "Too Many Requests",
		"rate limit", "Unexpected response code: 5", "Unexpected response code: 429"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// backoff is a jittered exponential backoff.
type backoff struct{ next time.Duration }

// wait sleeps for the next backoff step, but not past deadline. It returns
// false, without sleeping, when the step would end past the deadline.
func (b *backoff) wait(ctx context.Context, deadline time.Time) (bool, error) {
	b.next = min(max(2*b.next, minBackoff), maxBackoff)
	d := b.next/2 + rand.N(b.next/2+1) // half fixed, half random: waiters spread out
	if time.Until(deadline) < d {
		return false, nil
	}
	return true, sleep(ctx, d)
}

// retry calls fn until it succeeds, fails for good, or the deadline leaves
// no room for another attempt; it returns fn's last error.
func retry(ctx context.Context, deadline time.Time, fn func() error) error {
	var b backoff
	for {
		err := fn()
		if !transient(err) {
			return err
		}
		if ok, serr := b.wait(ctx, deadline); !ok || serr != nil {
			return errors.Join(err, serr)
		}
	}
}
