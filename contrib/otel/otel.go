// Package otel exports consullock's lock events as OpenTelemetry metrics.
// It lives in a module of its own so that the library does not depend on
// OpenTelemetry, and it uses only the metrics API: the application chooses
// the SDK and the exporter.
//
//	observer, err := otel.New(meterProvider.Meter("github.com/consullock/consullock"), otel.Options{})
//	locker, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithObserver(observer))
//
// Keys are labelled by a prefix (their first segments) rather than whole, to
// keep the number of attribute sets bounded.
package otel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/metriclabel"
)

// Options configure the metrics.
type Options struct {
	// PrefixSegments is how many leading segments of a key make its
	// "prefix" attribute; 0 means 3 (locks/ephemeral/NAME-SPACE).
	PrefixSegments int
}

// Observer is a consullock.Observer that records metrics.
type Observer struct {
	segments    int
	wait        metric.Float64Histogram
	hold        metric.Float64Histogram
	acquires    metric.Int64Counter
	contentions metric.Int64Counter
	losses      metric.Int64Counter
	renewErrors metric.Int64Counter
}

var _ consullock.Observer = (*Observer)(nil)

// New creates the instruments with meter and returns the Observer that
// feeds them:
//
//	consullock.acquire.wait{prefix,result}  histogram (s), result acquired|timeout|error
//	consullock.hold{prefix}                 histogram (s) of held time, at release or loss
//	consullock.acquires{prefix,result}      counter
//	consullock.contentions{prefix}          counter of keys found held by another session
//	consullock.losses{prefix}               counter
//	consullock.renewal.errors               counter of failed session renewals
func New(meter metric.Meter, opts Options) (*Observer, error) {
	o := &Observer{segments: max(opts.PrefixSegments, 0)}
	if o.segments == 0 {
		o.segments = 3
	}
	var errs [6]error
	o.wait, errs[0] = meter.Float64Histogram("consullock.acquire.wait", metric.WithUnit("s"),
		metric.WithDescription("Time from an acquire call to its return."),
		metric.WithExplicitBucketBoundaries(exponential(0.0005, 18)...))
	o.hold, errs[1] = meter.Float64Histogram("consullock.hold", metric.WithUnit("s"),
		metric.WithDescription("Time a lock was held, until its release or loss."),
		metric.WithExplicitBucketBoundaries(exponential(0.001, 22)...))
	o.acquires, errs[2] = meter.Int64Counter("consullock.acquires", metric.WithUnit("{acquire}"),
		metric.WithDescription("Acquires by result: acquired, timeout or error."))
	o.contentions, errs[3] = meter.Int64Counter("consullock.contentions", metric.WithUnit("{contention}"),
		metric.WithDescription("Acquires that found the key held by another session."))
	o.losses, errs[4] = meter.Int64Counter("consullock.losses", metric.WithUnit("{loss}"),
		metric.WithDescription("Locks lost while held."))
	o.renewErrors, errs[5] = meter.Int64Counter("consullock.renewal.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Session renewals that failed (and were retried)."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return o, nil
}

// exponential returns n bucket boundaries from start, each twice the last.
func exponential(start float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= 2
	}
	return b
}

// prefix keeps the first segments of key.
func (o *Observer) prefix(key string) attribute.KeyValue {
	return attribute.String("prefix", metriclabel.Prefix(key, o.segments))
}

// Acquired records the wait and the result.
func (o *Observer) Acquired(e consullock.AcquireEvent) {
	attrs := metric.WithAttributes(o.prefix(e.Key), attribute.String("result", metriclabel.Result(e.Err)))
	o.wait.Record(context.Background(), e.Wait.Seconds(), attrs)
	o.acquires.Add(context.Background(), 1, attrs)
}

// Contended counts a key found held.
func (o *Observer) Contended(e consullock.ContendEvent) {
	o.contentions.Add(context.Background(), 1, metric.WithAttributes(o.prefix(e.Key)))
}

// Released records the hold time.
func (o *Observer) Released(e consullock.ReleaseEvent) {
	o.hold.Record(context.Background(), e.Held.Seconds(), metric.WithAttributes(o.prefix(e.Key)))
}

// RenewFailed counts a failed renewal.
func (o *Observer) RenewFailed(consullock.RenewEvent) { o.renewErrors.Add(context.Background(), 1) }

// Lost counts a loss and records the hold time.
func (o *Observer) Lost(e consullock.LostEvent) {
	attrs := metric.WithAttributes(o.prefix(e.Key))
	o.losses.Add(context.Background(), 1, attrs)
	o.hold.Record(context.Background(), e.Held.Seconds(), attrs)
}
