package consullock

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"

	"github.com/hashicorp/consul/api"
)

// Consul's answers, and the errors of the calls that reach it, are turned
// into typed outcomes here and nowhere else. consul/api reports many of
// them as text, so Consul's own words are matched, never a message that
// could carry a key name.

// failure is what a failed call to Consul means for its caller.
type failure int

const (
	failPermanent failure = iota // retrying will not help
	failPassing                  // the same call may succeed in a moment
	failDenied                   // Consul refused the ACL token
	failSession                  // Consul no longer knows the session
	failCancelled                // the caller's context ended
)

// passingWords are Consul's words for failures that pass, in the errors of
// calls that report no status code.
var passingWords = []string{
	"No cluster leader",
	"leadership lost while committing log",
	"node is not the leader",
	"raft is already shutdown",
	"timed out enqueuing operation",
	"rpc error making call",
	"rpc error getting client",
	"Too Many Requests",
	"rate limit exceeded",
}

// classify tells what a failed call's error means.
func classify(err error) failure {
	var status api.StatusError
	var urlErr *url.Error
	switch {
	case err == nil:
		return failPermanent
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return failCancelled
	case errors.Is(err, errWriteTimedOut):
		return failPassing
	case errors.Is(err, errSessionInvalid), invalidSession(err.Error()):
		return failSession
	case errors.Is(err, ErrPermissionDenied), denied(err.Error()):
		return failDenied
	case errors.As(err, &status):
		return statusFailure(status.Code)
	case errors.As(err, &urlErr):
		return transportFailure(urlErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return failPassing
	}
	msg := err.Error()
	if _, code, ok := strings.Cut(msg, "Unexpected response code: "); ok { // renewals report only a code
		switch {
		case strings.HasPrefix(code, "403"):
			return failDenied
		case strings.HasPrefix(code, "5"), strings.HasPrefix(code, "429"):
			return failPassing
		}
	}
	for _, s := range passingWords {
		if strings.Contains(msg, s) {
			return failPassing
		}
	}
	return failPermanent
}

func statusFailure(code int) failure {
	switch code {
	case 403:
		return failDenied
	case 429, 500, 502, 503, 504:
		return failPassing
	}
	return failPermanent
}

// transportFailure classifies the error below an HTTP client's. TLS and
// name resolution failures are not retried: retrying only hides them until
// a deadline.
func transportFailure(err error) failure {
	var dnsErr *net.DNSError
	var unknownCA x509.UnknownAuthorityError
	var badCert x509.CertificateInvalidError
	var badHost x509.HostnameError
	var tlsRecord tls.RecordHeaderError
	var certVerify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &badCert), errors.As(err, &badHost),
		errors.As(err, &tlsRecord), errors.As(err, &certVerify):
		return failPermanent
	case errors.As(err, &dnsErr):
		if dnsErr.IsTemporary || dnsErr.IsTimeout {
			return failPassing
		}
		return failPermanent
	case strings.Contains(err.Error(), "unsupported protocol scheme"):
		return failPermanent
	}
	return failPassing // refused, reset, EOF, timeouts: the network or the agent, for now
}

// transient reports whether err is worth retrying.
func transient(err error) bool { return err != nil && classify(err) == failPassing }

func denied(msg string) bool {
	return strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found")
}

func invalidSession(msg string) bool {
	return strings.Contains(msg, "nvalid session")
}

// unapplied reports whether a write that failed with err certainly did not
// change Consul's state: it was never sent, or Consul refused it before
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
	msg := err.Error()
	return denied(msg) || invalidSession(msg) || strings.Contains(msg, "No cluster leader")
}

// consulError turns the error of a call to Consul into one that wraps a
// sentinel: ErrPermissionDenied, errSessionInvalid, ErrConsul, or the
// context's error, keeping Consul's words.
func consulError(err error) error {
	var status api.StatusError
	switch classify(err) {
	case failCancelled:
		return err
	case failDenied:
		if errors.Is(err, ErrPermissionDenied) {
			return err
		}
		if errors.As(err, &status) {
			return fmt.Errorf("%w: %s", ErrPermissionDenied, status.Body)
		}
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	case failSession:
		if errors.Is(err, errSessionInvalid) {
			return err
		}
		return fmt.Errorf("%w: %w", errSessionInvalid, err)
	}
	if errors.Is(err, ErrConsul) {
		return err
	}
	if tooManyRequests(err) {
		return fmt.Errorf("%w: %w (HTTP 429: the agent's limit of connections per client address, limits.http_max_conns_per_client, 200 by default, or its request rate limit)", ErrConsul, err)
	}
	return fmt.Errorf("%w: %w", ErrConsul, err)
}

func tooManyRequests(err error) bool {
	var status api.StatusError
	if errors.As(err, &status) {
		return status.Code == 429
	}
	return strings.Contains(err.Error(), "429") || strings.Contains(err.Error(), "Too Many Requests")
}

// txnOutcome is what Consul's words for a failed operation of a transaction
// mean (agent/consul/txn_endpoint.go and agent/consul/state/txn.go).
type txnOutcome int

const (
	txnFailed      txnOutcome = iota // anything else
	txnHeld                          // another session holds the key
	txnLockDelay                     // a lock delay keeps the key from everyone
	txnNoSession                     // the session is unknown to Consul
	txnDenied                        // the ACL token may not do it
	txnCheckFailed                   // a check-index or check-session did not hold
)

func classifyTxnError(what string) txnOutcome {
	switch {
	case strings.Contains(what, "due to lock delay"):
		return txnLockDelay
	case strings.Contains(what, "lock is already held"):
		return txnHeld
	case invalidSession(what):
		return txnNoSession
	case denied(what):
		return txnDenied
	case strings.Contains(what, "current modify index"), strings.Contains(what, "doesn't exist"),
		strings.Contains(what, "failed session check"), strings.Contains(what, "does not exist"):
		return txnCheckFailed
	}
	return txnFailed
}
