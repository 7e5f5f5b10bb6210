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
               holder's acquire.

The agent is the one at CONSUL_HTTP_ADDR when it answers, else a dev agent
that bench starts; -cluster 3 starts a 3-server cluster instead.

Progress goes to stderr: redrawn on one line when stderr is a terminal, else
a plain line every few seconds; -q shows none.

Examples:
  consul-lock bench
  consul-lock bench -cluster 3 -plot latency.svg
  consul-lock bench -json > results.json
  consul-lock bench -cluster 3 2>&1 | tee bench.log

Flags:
`

type benchReport struct {
	Agent       string         `json:"agent"`
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
	fs.Usage = func() { fmt.Fprint(fs.Output(), benchUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	workers, err := parseWorkers(*workersFlag)
	if err != nil || *cycles < 1 || *duration <= 0 {
		return usageError{errors.Join(err, errors.New("-cycles and -duration must be positive, -workers a list of positive numbers"))}
	}
	if *plot != "" && filepath.Ext(*plot) != ".svg" {
		return usageError{fmt.Errorf("-plot %s: only .svg charts are written", *plot)}
	}
	meter := progress.New(s.errOut, *quiet)
	defer meter.Done() // before an error is printed on the line
	c, where, cleanup, err := benchAgent(ctx, *cluster, meter)
	if err != nil {
		return err
	}
	defer cleanup()
	defer bench.Cleanup(context.WithoutCancel(ctx), c)

	report := benchReport{Agent: where}
	for _, impl := range bench.Impls() {
		r, err := runCase(ctx, c, impl, bench.Spec{Workers: 1, Cycles: *cycles}, meter)
		if err != nil {
			return err
		}
		report.Uncontended = append(report.Uncontended, r)
	}
	for _, n := range workers {
		for _, impl := range bench.Impls()[1:] { // the raw floor is no lock
			r, err := runCase(ctx, c, impl, bench.Spec{Workers: n, Duration: *duration}, meter)
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

func parseWorkers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 1 {
			return nil, fmt.Errorf("-workers %q", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchAgent returns a client of the agent to measure: a cluster of its own
// when asked, the one at CONSUL_HTTP_ADDR when it answers, else a dev agent.
func benchAgent(ctx context.Context, servers int, meter *progress.Meter) (*api.Client, string, func(), error) {
	if servers > 0 {
		found, err := consulBinary(ctx, meter)
		if err != nil {
			return nil, "", nil, err
		}
		dir, err := os.MkdirTemp("", "consul-lock-bench-")
		if err != nil {
			return nil, "", nil, err
		}
		cl, err := consulagent.StartCluster(ctx, found.Path, dir, servers)
		if err != nil {
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		c, closeIdle, err := cl.Servers[0].Client()
		if err != nil {
			cl.Stop()
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		where := fmt.Sprintf("%d-server loopback cluster, Consul v%s", servers, found.Version)
		return c, where, func() { closeIdle(); cl.Stop(); os.RemoveAll(dir) }, nil
	}
	addr, cleanup, err := demoAgent(ctx, meter)
	if err != nil {
		return nil, "", nil, err
	}
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	return c, "agent at " + addr, cleanup, nil
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
	var apiRate = map[int]float64{}
	for _, x := range r.Contended {
		if x.Impl == bench.ConsulAPI.Name {
			apiRate[x.Workers] = x.PerSecond
		}
	}
	for i, x := range r.Contended {
		if i == 0 || r.Contended[i-1].Workers != x.Workers {
			fmt.Fprintf(w, "\nContended: %d workers on one key, %v each\n", x.Workers, d)
			tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "implementation\tcycles/s\tvs consul/api\thandoff p50\tcycle p99\tcycle max\tattempts/acquire\t")
		}
		ratio := "-"
		if apiRate[x.Workers] > 0 {
			ratio = fmt.Sprintf("%.1fx", x.PerSecond/apiRate[x.Workers])
		}
		attempts := "-"
		if x.AttemptsPerAcquire > 0 {
			attempts = fmt.Sprintf("%.2f", x.AttemptsPerAcquire)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", x.Impl, x.PerSecond, ratio, msf(x.HandoffP50), msf(x.P99), msf(x.Max), attempts)
		if i == len(r.Contended)-1 || r.Contended[i+1].Workers != x.Workers {
			tw.Flush()
		}
	}
}
