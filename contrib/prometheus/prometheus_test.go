package prometheus_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/contrib/prometheus"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/observertest"
)

func TestMain(m *testing.M) { consultest.Main(m) }

// Lock cycles, a timed-out acquire, contention and a loss on a real agent
// show up in the metrics, labelled by key prefix.
func TestMetricsFollowLockEvents(t *testing.T) {
	reg := prom.NewRegistry()
	o, err := prometheus.New(reg, prometheus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	observertest.Traffic(t, o)

	const want = `
# HELP consullock_acquires_total Acquires by result: acquired, timeout or error.
# TYPE consullock_acquires_total counter
consullock_acquires_total{prefix="locks/ephemeral/billing",result="acquired"} 4
consullock_acquires_total{prefix="locks/ephemeral/billing",result="timeout"} 1
# HELP consullock_contentions_total Acquires that found the key held by another session.
# TYPE consullock_contentions_total counter
consullock_contentions_total{prefix="locks/ephemeral/billing"} 1
# HELP consullock_losses_total Locks lost while held.
# TYPE consullock_losses_total counter
consullock_losses_total{prefix="locks/ephemeral/billing"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"consullock_acquires_total", "consullock_contentions_total", "consullock_losses_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "consullock_hold_seconds"); n != 1 {
		t.Errorf("%d hold-time series, want 1 (one prefix)", n)
	}
}

// Failed renewals are counted (a session has no key, so the counter has no
// prefix label), and PrefixSegments sets how much of a key labels it.
func TestRenewalErrorsAndPrefixSegments(t *testing.T) {
	reg := prom.NewRegistry()
	o, err := prometheus.New(reg, prometheus.Options{Namespace: "x", PrefixSegments: 2})
	if err != nil {
		t.Fatal(err)
	}
	o.RenewFailed(consullock.RenewEvent{Session: "s", Err: errors.New("500")})
	o.RenewFailed(consullock.RenewEvent{Session: "s", Err: errors.New("500")})
	o.Lost(consullock.LostEvent{Key: "locks/ephemeral/billing/invoice-1", Held: time.Second})
	const want = `
# HELP x_renewal_errors_total Session renewals that failed (and were retried).
# TYPE x_renewal_errors_total counter
x_renewal_errors_total 2
# HELP x_losses_total Locks lost while held.
# TYPE x_losses_total counter
x_losses_total{prefix="locks/ephemeral"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "x_renewal_errors_total", "x_losses_total"); err != nil {
		t.Fatal(err)
	}
}
