package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/bench"
	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/progress"
)

const benchUsage = `Usage: consul-lock bench [flags]

Runs lock cycles (acquire, then release) of consullock's Locker and
EphemeralLock, of consul/api's Lock, and of the floor of two raw KV writes,
one after the other against the same Consul agent, and prints p50 and p99
latency, cycles per second, and the ratios between them:

  uncontended: one worker, -cycles cycles each;
  contended:   -workers workers (a Locker or a consul/api Lock each, as
               separate processes would have) on one key, for -duration each,
               with the handoff time from a holder's release to the next
               holder's acquire;
  processes:   with -processes, the same with each worker an OS process of
               its own, as on different hosts.

Contended cases are also compared with the ticket floor: a fair ticket lock
on two raw keys, with no session and no safety, which passes the lock to
the next waiter in one write and one wake-up, the least any lock on Consul
spends to pass between processes. They report the worst wait for the
lock, in time and in turns (the most acquires of others during one wait:
in arrival order, fewer than the workers; a wait the end of the run cut
off counts up to the end), and each worker's share (the
fewest cycles a worker completed over the mean: a lock that starves some
workers is not fast). Every implementation runs on one client setup: the
transport keeps 72 idle connections and asks for no compression, as the
README advises. -hold makes each holder hold the lock that long;
the overhead per cycle (the cycle time less the hold) is then given in raw
writes (half the floor's p50).

The agent is the one at CONSUL_HTTP_ADDR when it answers, else a dev agent
that bench starts; -cluster 3 starts a 3-server cluster instead.

Progress goes to stderr: redrawn on one line when stderr is a terminal, else
a plain line every few seconds; -q shows none.

Examples:
  consul-lock bench
  consul-lock bench -cluster 3 -plot latency.svg
  consul-lock bench -json > results.json
  consul-lock bench -processes 4,16 -hold 1ms
  consul-lock bench -cluster 3 2>&1 | tee bench.log

Flags:
`

type benchReport struct {
	Agent       string         `json:"agent"`
	Hold        time.Duration  `json:"hold_ns"`
	Uncontended []bench.Result `json:"uncontended"`
	Contended   []bench.Result `json:"contended"`
}

func runBench(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("consul-lock bench", flag.ContinueOnError)
	cycles := fs.Int("cycles", 1000, "uncontended lock cycles per implementation")
	workersFlag := fs.String("workers", "4,16", "comma-separated numbers of contending workers")
	duration := fs.Duration("duration", 5*time.Second, "how long each contended case runs")
	cluster := fs.Int("cluster", 0, "start a cluster of this many servers (3 or 5) instead of using CONSUL_HTTP_ADDR")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	plot := fs.String("plot", "", "write an SVG chart of the uncontended latency distributions to this `file`")
	quiet := fs.Bool("q", false, "show no progress")
	processesFlag := fs.String("processes", "", "comma-separated numbers of contending worker processes (none by default)")
	hold := fs.Duration("hold", 0, "how long each contended holder holds the lock")
	fs.Usage = func() { fmt.Fprint(fs.Output(), benchUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	workers, err := parseWorkers("-workers", *workersFlag)
	var processes []int
	if err == nil && *processesFlag != "" {
		processes, err = parseWorkers("-processes", *processesFlag)
	}
	if err != nil || *cycles < 1 || *duration <= 0 || *hold < 0 {
		return usageError{errors.Join(err, errors.New("-cycles and -duration must be positive, -hold not negative, -workers and -processes lists of positive numbers"))}
	}
	if *plot != "" && filepath.Ext(*plot) != ".svg" {
		return usageError{fmt.Errorf("-plot %s: only .svg charts are written", *plot)}
	}
	meter := progress.New(s.errOut, *quiet)
	defer meter.Done() // before an error is printed on the line
	c, addr, where, cleanup, err := benchAgent(ctx, *cluster, meter)
	if err != nil {
		return err
	}
	defer cleanup()
	defer bench.Cleanup(context.WithoutCancel(ctx), c)

	report := benchReport{Agent: where, Hold: *hold}
	for _, impl := range bench.Impls() {
		r, err := runCase(ctx, c, impl, bench.Spec{Workers: 1, Cycles: *cycles}, meter)
		if err != nil {
			return err
		}
		report.Uncontended = append(report.Uncontended, r)
	}
	for _, n := range workers {
		for _, impl := range bench.ContendedImpls() {
			r, err := runCase(ctx, c, impl, bench.Spec{Workers: n, Duration: *duration, Hold: *hold}, meter)
			if err != nil {
				return err
			}
			report.Contended = append(report.Contended, r)
		}
	}
	for _, n := range processes {
		for _, impl := range processImpls {
			r, err := runProcesses(ctx, addr, impl, n, *duration, *hold, meter)
			if err != nil {
				return err
			}
			report.Contended = append(report.Contended, r)
		}
	}
	meter.Done()
	if *plot != "" {
		if err := writePlot(*plot, where, report.Uncontended); err != nil {
			return err
		}
	}
	if *asJSON {
		printJSON(s.out, report)
		return nil
	}
	printReport(s.out, report, *cycles, *duration)
	return nil
}

// runCase runs one case, showing its progress on meter. The workers report
// at once, each after its every cycle; the meter keeps one line in order.
func runCase(ctx context.Context, c *api.Client, impl bench.Impl, spec bench.Spec, meter *progress.Meter) (bench.Result, error) {
	label := fmt.Sprintf("bench: %s, %d worker(s)", impl.Name, spec.Workers)
	start := time.Now()
	key := fmt.Sprintf("bench-%d-%d", spec.Workers, time.Now().UnixNano())
	return bench.RunSpec(ctx, c, impl, key, spec, func(done int) {
		if spec.Cycles > 0 {
			meter.Show(fmt.Sprintf("%s: %d/%d cycles", label, done, spec.Cycles))
		} else {
			meter.Show(fmt.Sprintf("%s: %d cycles, %.0fs/%.0fs", label, done, time.Since(start).Seconds(), spec.Duration.Seconds()))
		}
	})
}

func parseWorkers(flag, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%s %q", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchAgent returns a client of the agent to measure: a cluster of its own
// when asked, the one at CONSUL_HTTP_ADDR when it answers, else a dev agent.
// Every implementation measured uses this client, tuned as the README
// advises (see tune).
func benchAgent(ctx context.Context, servers int, meter *progress.Meter) (c *api.Client, addr, where string, cleanup func(), err error) {
	if servers > 0 {
		addr, where, cleanup, err = benchCluster(ctx, servers, meter)
	} else {
		addr, cleanup, err = demoAgent(ctx, meter)
		where = "agent at " + addr
	}
	if err != nil {
		return nil, "", "", nil, err
	}
	cfg := tunedConfig()
	cfg.Address = addr
	if c, err = api.NewClient(cfg); err != nil {
		cleanup()
		return nil, "", "", nil, err
	}
	stop := cleanup
	return c, addr, where, func() { cfg.Transport.CloseIdleConnections(); stop() }, nil
}

// benchCluster starts a loopback cluster of its own for the benchmark.
func benchCluster(ctx context.Context, servers int, meter *progress.Meter) (addr, where string, cleanup func(), err error) {
	found, err := consulBinary(ctx, meter)
	if err != nil {
		return "", "", nil, err
	}
	dir, err := os.MkdirTemp("", "consul-lock-bench-")
	if err != nil {
		return "", "", nil, err
	}
	cl, err := consulagent.StartCluster(ctx, found.Path, dir, servers)
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	where = fmt.Sprintf("%d-server loopback cluster, Consul v%s", servers, found.Version)
	return cl.Servers[0].HTTPAddr(), where, func() { cl.Stop(); os.RemoveAll(dir) }, nil
}

func writePlot(path, where string, results []bench.Result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := bench.PlotSVG(f, "Uncontended lock cycle, "+where, results); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func printReport(w io.Writer, r benchReport, cycles int, d time.Duration) {
	msf := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "%s\n\nUncontended: one worker, %d lock cycles each\n", r.Agent, cycles)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "implementation\tp50\tp99\tcycles/s\tp50 vs floor\t")
	floor := r.Uncontended[0].P50
	for _, x := range r.Uncontended {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.2fx\t\n", x.Impl, msf(x.P50), msf(x.P99), x.PerSecond, float64(x.P50)/float64(floor))
	}
	tw.Flush()
	type group struct {
		workers   int
		processes bool
	}
	apiRate, floorRate := map[group]float64{}, map[group]float64{}
	for _, x := range r.Contended {
		switch x.Impl {
		case bench.ConsulAPI.Name:
			apiRate[group{x.Workers, x.Processes}] = x.PerSecond
		case bench.TicketFloor.Name:
			floorRate[group{x.Workers, x.Processes}] = x.PerSecond
		}
	}
	ratio := func(rate float64, of map[group]float64, g group) string {
		if of[g] <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", rate/of[g])
	}
	write := floor / 2
	for i, x := range r.Contended {
		g := group{x.Workers, x.Processes}
		if i == 0 || (group{r.Contended[i-1].Workers, r.Contended[i-1].Processes}) != g {
			kind := "workers in one process"
			if x.Processes {
				kind = "processes"
			}
			fmt.Fprintf(w, "\nContended: %d %s on one key, %v each, hold %v\n", x.Workers, kind, d, r.Hold)
			tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "implementation\tcycles/s\tvs ticket floor\tvs consul/api\toverhead/cycle\thandoff p50\tcycle p99\tworst wait\tturns waited\tmin share\tattempts/acquire\t")
		}
		attempts := "-"
		if x.AttemptsPerAcquire > 0 {
			attempts = fmt.Sprintf("%.2f", x.AttemptsPerAcquire)
		}
		overhead := "-"
		if x.PerSecond > 0 && write > 0 {
			cycle := time.Duration(float64(time.Second) / x.PerSecond)
			overhead = fmt.Sprintf("%.2f writes", float64(cycle-r.Hold)/float64(write))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.2f\t%s\t\n", x.Impl, x.PerSecond, ratio(x.PerSecond, floorRate, g), ratio(x.PerSecond, apiRate, g), overhead, msf(x.HandoffP50), msf(x.P99), msf(x.MaxWait), x.MostTurns, x.MinShare, attempts)
		if i == len(r.Contended)-1 || (group{r.Contended[i+1].Workers, r.Contended[i+1].Processes}) != g {
			tw.Flush()
		}
	}
}
