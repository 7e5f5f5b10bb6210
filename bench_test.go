package consullock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/bench"
	"github.com/consullock/consullock/internal/consultest"
)

// BenchmarkCycle is one uncontended lock cycle (acquire and release) of each
// implementation, against the same agent. consul-lock bench reports the same
// figures as ratios.
func BenchmarkCycle(b *testing.B) {
	c := consultest.Client(b)
	for _, impl := range bench.Impls() {
		b.Run(impl.Name, func(b *testing.B) {
			res, err := bench.Run(context.Background(), c, impl, fmt.Sprintf("bench-cycle-%d", b.N), 1, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(ms(res.P50), "p50-ms")
			b.ReportMetric(ms(res.P99), "p99-ms")
		})
	}
	bench.Cleanup(context.Background(), c)
}

// BenchmarkContended is the throughput of workers contending for one key,
// and the handoff from a holder's release to the next holder's acquire.
func BenchmarkContended(b *testing.B) {
	c := consultest.Client(b)
	for _, workers := range []int{4, 16} {
		for _, impl := range bench.ContendedImpls() {
			b.Run(fmt.Sprintf("%s/workers=%d", impl.Name, workers), func(b *testing.B) {
				res, err := bench.Run(context.Background(), c, impl, fmt.Sprintf("bench-contended-%d-%d", workers, b.N), workers, b.N, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(res.PerSecond, "cycles/s")
				b.ReportMetric(ms(res.HandoffP50), "handoff-p50-ms")
			})
		}
	}
	bench.Cleanup(context.Background(), c)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkSemaphoreCycle is an uncontended cycle of a limit-3 semaphore:
// one read of the slots and two writes.
func BenchmarkSemaphoreCycle(b *testing.B) {
	c := consultest.Client(b)
	lk, err := consullock.NewLocker(consullock.WithClient(c))
	if err != nil {
		b.Fatal(err)
	}
	defer lk.Close(context.Background())
	sem, err := lk.Semaphore("bench-semaphore", 3)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		l, err := sem.Acquire(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		l.Release(context.Background())
	}
}

// BenchmarkAcquireAllCycle takes two keys at once and releases them: one
// transaction to take both, one write to give back each (three writes, one
// fewer than taking them one by one).
func BenchmarkAcquireAllCycle(b *testing.B) {
	c := consultest.Client(b)
	lk, err := consullock.NewLocker(consullock.WithClient(c))
	if err != nil {
		b.Fatal(err)
	}
	defer lk.Close(context.Background())
	for b.Loop() {
		leases, err := lk.AcquireAll(context.Background(), "bench-all/a", "bench-all/b")
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range leases {
			l.Release(context.Background())
		}
	}
}

// BenchmarkElectionTerm is a campaign that wins at once and a resignation:
// a session, the key, and the session's end (three writes), as a
// leader-elected process pays once per term.
func BenchmarkElectionTerm(b *testing.B) {
	c := consultest.Client(b)
	e, err := consullock.NewElection("bench-election", consullock.WithClient(c))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		term, err := e.Campaign(context.Background(), []byte("me"))
		if err != nil {
			b.Fatal(err)
		}
		term.Resign(context.Background())
	}
}
