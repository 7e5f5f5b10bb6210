package bench_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/consullock/consullock/internal/bench"
	"github.com/consullock/consullock/internal/consultest"
)

func TestMain(m *testing.M) { consultest.Main(m) }

// Every implementation completes the cycles asked of it, contended and not,
// and consullock's report the attempts their Observer counted.
func TestRunMeasuresEveryImpl(t *testing.T) {
	c := consultest.Client(t)
	ctx := context.Background()
	defer bench.Cleanup(ctx, c)
	var results []bench.Result
	for _, impl := range append(bench.Impls(), bench.TicketFloor) {
		for _, workers := range []int{1, 3} {
			// A key of its own per run: a key that this process saw others
			// wait for a moment ago makes a lone acquire queue rather than
			// take at once, which is not an uncontended cycle.
			key := fmt.Sprintf("bench-test-%s-%d", impl.ID, workers)
			r, err := bench.Run(ctx, c, impl, key, workers, 30, nil)
			if err != nil {
				t.Fatalf("%s, %d workers: %v", impl.Name, workers, err)
			}
			if r.Cycles != 30 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99 || r.PerSecond <= 0 {
				t.Errorf("%s, %d workers: %+v", impl.Name, workers, r)
			}
			consullock := strings.HasPrefix(impl.Name, "consullock")
			if consullock && (r.AttemptsPerAcquire < 1 || workers == 1 && r.AttemptsPerAcquire != 1) {
				t.Errorf("%s, %d workers: %.2f attempts per acquire", impl.Name, workers, r.AttemptsPerAcquire)
			}
			if workers > 1 && r.HandoffP50 <= 0 {
				t.Errorf("%s, %d workers: no handoff measured", impl.Name, workers)
			}
			if workers == 1 {
				results = append(results, r)
			}
		}
	}
	var svg strings.Builder
	if err := bench.PlotSVG(&svg, "test", results); err != nil || !strings.Contains(svg.String(), "</svg>") {
		t.Fatalf("PlotSVG: %v", err)
	}
}

// The worst wait in turns counts the acquires of others between a wait's
// start and its lock held: three workers taking turns in order wait two
// turns each, and a worker overtaken by two turns of another waits more.
func TestUnitMostTurns(t *testing.T) {
	inTurn := [][]bench.Cycle{
		{cycleAt(0, 10), cycleAt(12, 40)},
		{cycleAt(1, 20), cycleAt(22, 50)},
		{cycleAt(2, 30), cycleAt(32, 60)},
	}
	if got := bench.Merge("x", inTurn, 0, 0, 1).MostTurns; got != 2 {
		t.Errorf("three workers in turn: most turns %d, want 2", got)
	}
	overtaken := [][]bench.Cycle{
		{cycleAt(0, 10), cycleAt(11, 20), cycleAt(21, 30)},
		{cycleAt(1, 40)},
	}
	if got := bench.Merge("x", overtaken, 0, 0, 1).MostTurns; got != 3 {
		t.Errorf("a wait overtaken three times: most turns %d, want 3", got)
	}
}

// A wait the end of the run cut off is no cycle, but it is a wait: a worker
// starved for the whole run makes the worst wait the run's length, its
// turns every acquire of the others, and its share nothing.
func TestUnitStarvedWaitCounts(t *testing.T) {
	workers := [][]bench.Cycle{
		{cycleAt(0, 10), cycleAt(12, 20), cycleAt(22, 30)},
		{{Start: 1, End: 35}},
	}
	r := bench.Merge("x", workers, 0, 0, 1)
	if r.Cycles != 3 || r.MaxWait != 34 || r.MostTurns != 3 || r.MinShare != 0 {
		t.Errorf("starved worker: %d cycles, worst wait %d, %d turns, min share %.2f; want 3, 34, 3, 0",
			r.Cycles, r.MaxWait, r.MostTurns, r.MinShare)
	}
}

// cycleAt is a cycle begun at start and acquired at acquired, whose hold
// and release take a nanosecond each.
func cycleAt(start, acquired int64) bench.Cycle {
	return bench.Cycle{Start: start, Acquired: acquired, Released: acquired + 1, End: acquired + 2}
}
