package consullock

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
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

// passingFailures are Consul's words for failures that pass. Only Consul's
// own error texts are matched (those of consul/api calls that report no
// status code), never a message that could carry a key name.
var passingFailures = []string{
	"No cluster leader",
	"leadership lost while committing log",
	"node is not the leader",
	"raft is already shutdown",
	"timed out enqueuing operation",
	"rpc error making call: EOF",
	"Too Many Requests",
	"rate limit exceeded",
}

// transient reports whether err is worth retrying: the same call may succeed
// in a moment. Permission, TLS, name resolution and cancellation errors are
// not: retrying them only hides the problem until a deadline.
func transient(err error) bool {
	var status api.StatusError
	var urlErr *url.Error
	switch {
	case errors.Is(err, errWriteTimedOut):
		return true
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, ErrPermissionDenied), permissionDenied(err):
		return false
	case errors.As(err, &status):
		switch status.Code {
		case 429, 500, 502, 503, 504:
			return true
		}
		return false
	case errors.As(err, &urlErr):
		return transientTransport(urlErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	msg := err.Error()
	if code, ok := strings.CutPrefix(msg, "Unexpected response code: "); ok { // renewals report only a code
		return strings.HasPrefix(code, "5") || strings.HasPrefix(code, "429")
	}
	for _, s := range passingFailures {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// transientTransport classifies the error below an HTTP client's.
func transientTransport(err error) bool {
	var dnsErr *net.DNSError
	var unknownCA x509.UnknownAuthorityError
	var badCert x509.CertificateInvalidError
	var badHost x509.HostnameError
	var tlsRecord tls.RecordHeaderError
	var certVerify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &badCert), errors.As(err, &badHost),
		errors.As(err, &tlsRecord), errors.As(err, &certVerify):
		return false
	case errors.As(err, &dnsErr):
		return dnsErr.IsTemporary || dnsErr.IsTimeout
	case strings.Contains(err.Error(), "unsupported protocol scheme"):
		return false
	}
	return true // refused, reset, EOF, timeouts: the network or the agent, for now
}

// permissionDenied recognises Consul's refusal of a token in the errors of
// calls that report no status code.
func permissionDenied(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found")
}

// unapplied reports whether a write that failed with err certainly did not
// reach Consul's state: it was never sent, or Consul refused it before
// applying anything. Any other failure may hide a write that was applied.
func unapplied(err error) bool {
	var status api.StatusError
	var opErr *net.OpError
	switch {
	case err == nil:
		return true
	case errors.As(err, &opErr) && opErr.Op == "dial", errors.Is(err, syscall.ECONNREFUSED):
		return true
	case errors.As(err, &status):
		return status.Code == 429 || status.Code == 403 || status.Code == 400 || strings.Contains(status.Body, "No cluster leader")
	}
	return permissionDenied(err) || strings.Contains(err.Error(), "No cluster leader")
}

// backoff is a jittered exponential backoff.
type backoff struct{ next time.Duration }

// wait sleeps for the next backoff step, but not past deadline. It returns
// false, without sleeping, when the step would end past the deadline.
func (b *backoff) wait(ctx context.Context, deadline time.Time) (bool, error) {
	d := b.step()
	if time.Until(deadline) < d {
		return false, nil
	}
	return true, sleep(ctx, d)
}

// step returns the next pause: half fixed, half random, so that waiters
// spread out.
func (b *backoff) step() time.Duration {
	b.next = min(max(2*b.next, minBackoff), maxBackoff)
	return b.next/2 + rand.N(b.next/2+1)
}

// retry calls fn until it succeeds, fails for good, ctx ends, or the
// deadline leaves no room for another attempt; it returns fn's last error.
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
