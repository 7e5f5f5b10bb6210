package otel_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/contrib/otel"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/observertest"
)

func TestMain(m *testing.M) { consultest.Main(m) }

// Lock cycles, a timed-out acquire, contention and a loss on a real agent
// show up in the metrics, labelled by key prefix.
func TestMetricsFollowLockEvents(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	o, err := otel.New(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"), otel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	held := observertest.Traffic(t, o)

	got := collect(t, reader)
	renewals := got["consullock.renewal.errors"] // timing-dependent; counted exactly in TestOptionsAndRenewalErrors
	delete(got, "consullock.renewal.errors")
	for attrs := range renewals {
		if attrs != "" {
			t.Errorf("renewal errors have attributes %q, want none", attrs)
		}
	}
	const p = "prefix=locks/ephemeral/billing"
	want := map[string]map[string]int64{
		"consullock.acquire.wait": {p + ",result=acquired": 4, p + ",result=timeout": 1},
		"consullock.acquires":     {p + ",result=acquired": 4, p + ",result=timeout": 1},
		"consullock.contentions":  {p: 1},
		"consullock.losses":       {p: 1},
		"consullock.hold":         {p: 4}, // three releases and the loss
	}
	if !maps.EqualFunc(got, want, maps.Equal) {
		t.Errorf("metrics (counts per attribute set):\n got %v\nwant %v", got, want)
	}
	secrets := []string{"invoice", held.Session(), strconv.FormatUint(held.Token(), 10)}
	for name, sets := range got {
		for attrs := range sets {
			for _, s := range secrets {
				if strings.Contains(attrs, s) {
					t.Errorf("%s has attributes %q, which contain %q", name, attrs, s)
				}
			}
		}
	}
}

// PrefixSegments sets the prefix's length, and renewal errors are counted
// without the session.
func TestOptionsAndRenewalErrors(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	o, err := otel.New(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"), otel.Options{PrefixSegments: 4})
	if err != nil {
		t.Fatal(err)
	}
	o.Contended(consullock.ContendEvent{Key: "locks/ephemeral/billing/eu/invoice-1", Holder: "holder-session"})
	o.Contended(consullock.ContendEvent{Key: "short/key", Holder: "holder-session"})
	o.RenewFailed(consullock.RenewEvent{Session: "renewed-session", Err: errors.New("boom")})
	o.RenewFailed(consullock.RenewEvent{Session: "renewed-session", Err: errors.New("boom")})
	want := map[string]map[string]int64{
		"consullock.contentions":    {"prefix=locks/ephemeral/billing/eu": 1, "prefix=short/key": 1},
		"consullock.renewal.errors": {"": 2},
	}
	if got := collect(t, reader); !maps.EqualFunc(got, want, maps.Equal) {
		t.Errorf("metrics (counts per attribute set):\n got %v\nwant %v", got, want)
	}
}

// collect returns, for each metric, the counter's value or the histogram's
// count per attribute set, the set written as "k=v,k=v".
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			counts := map[string]int64{}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					counts[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Value
				}
			case metricdata.Histogram[float64]:
				if m.Unit != "s" {
					t.Errorf("%s has unit %q, want s", m.Name, m.Unit)
				}
				for _, dp := range d.DataPoints {
					if len(dp.Bounds) < 10 || dp.Bounds[0] > 0.001 {
						t.Errorf("%s has bounds %v, want the explicit ones", m.Name, dp.Bounds)
					}
					counts[dp.Attributes.Encoded(attribute.DefaultEncoder())] = int64(dp.Count)
				}
			default:
				t.Fatalf("%s has data of type %T", m.Name, m.Data)
			}
			got[m.Name] = counts
		}
	}
	return got
}
