// Package prometheus exports consullock's lock events as Prometheus metrics.
// It lives in a module of its own so that the library does not depend on the
// Prometheus client.
//
//	observer, err := prometheus.New(prom.DefaultRegisterer, prometheus.Options{})
//	locker, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithObserver(observer))
//
// Keys are labelled by a prefix (their first segments) rather than whole, to
// keep the number of series bounded.
package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/metriclabel"
)

// Options configure the metrics.
type Options struct {
	// Namespace prefixes every metric name; "" means "consullock".
	Namespace string
	// PrefixSegments is how many leading segments of a key make its
	// "prefix" label; 0 means 3 (locks/ephemeral/NAME-SPACE).
	PrefixSegments int
}

// Observer is a consullock.Observer that records metrics.
type Observer struct {
	segments    int
	wait        *prom.HistogramVec
	hold        *prom.HistogramVec
	acquires    *prom.CounterVec
	contentions *prom.CounterVec
	losses      *prom.CounterVec
	renewErrors prom.Counter
}

var _ consullock.Observer = (*Observer)(nil)

// New creates the metrics, registers them with reg and returns the Observer
// that feeds them:
//
//	consullock_acquire_wait_seconds{prefix,result}  histogram, result acquired|timeout|error
//	consullock_hold_seconds{prefix}                 histogram of held time, at release or loss
//	consullock_acquires_total{prefix,result}        counter
//	consullock_contentions_total{prefix}            counter of keys found held by another session
//	consullock_losses_total{prefix}                 counter
//	consullock_renewal_errors_total                 counter of failed session renewals
func New(reg prom.Registerer, opts Options) (*Observer, error) {
	ns := opts.Namespace
	if ns == "" {
		ns = "consullock"
	}
	o := &Observer{
		segments: max(opts.PrefixSegments, 0),
		wait: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "acquire_wait_seconds",
			Help: "Time from an acquire call to its return.", Buckets: prom.ExponentialBuckets(0.0005, 2, 18)},
			[]string{"prefix", "result"}),
		hold: prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "hold_seconds",
			Help: "Time a lock was held, until its release or loss.", Buckets: prom.ExponentialBuckets(0.001, 2, 22)},
			[]string{"prefix"}),
		acquires: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "acquires_total",
			Help: "Acquires by result: acquired, timeout or error."}, []string{"prefix", "result"}),
		contentions: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "contentions_total",
			Help: "Acquires that found the key held by another session."}, []string{"prefix"}),
		losses: prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: "losses_total",
			Help: "Locks lost while held."}, []string{"prefix"}),
		renewErrors: prom.NewCounter(prom.CounterOpts{Namespace: ns, Name: "renewal_errors_total",
			Help: "Session renewals that failed (and were retried)."}),
	}
	if o.segments == 0 {
		o.segments = 3
	}
	for _, c := range []prom.Collector{o.wait, o.hold, o.acquires, o.contentions, o.losses, o.renewErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// prefix keeps the first segments of key.
func (o *Observer) prefix(key string) string { return metriclabel.Prefix(key, o.segments) }

// Acquired records the wait and the result.
func (o *Observer) Acquired(e consullock.AcquireEvent) {
	p := o.prefix(e.Key)
	o.wait.WithLabelValues(p, metriclabel.Result(e.Err)).Observe(e.Wait.Seconds())
	o.acquires.WithLabelValues(p, metriclabel.Result(e.Err)).Inc()
}

// Contended counts a key found held.
func (o *Observer) Contended(e consullock.ContendEvent) {
	o.contentions.WithLabelValues(o.prefix(e.Key)).Inc()
}

// Released records the hold time.
func (o *Observer) Released(e consullock.ReleaseEvent) {
	o.hold.WithLabelValues(o.prefix(e.Key)).Observe(e.Held.Seconds())
}

// RenewFailed counts a failed renewal.
func (o *Observer) RenewFailed(consullock.RenewEvent) { o.renewErrors.Inc() }

// Lost counts a loss and records the hold time.
func (o *Observer) Lost(e consullock.LostEvent) {
	p := o.prefix(e.Key)
	o.losses.WithLabelValues(p).Inc()
	o.hold.WithLabelValues(p).Observe(e.Held.Seconds())
}
