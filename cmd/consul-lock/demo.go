package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/progress"
)

// demoSectionCommand is the hidden command that the demo's workers run
// under the lock: it reports its turn and holds the lock for a while.
const demoSectionCommand = "demo-section"

func runDemo(ctx context.Context, args []string, s stdio) error {
	fs := flag.NewFlagSet("consul-lock demo", flag.ContinueOnError)
	workers := fs.Int("workers", 4, "`number` of worker processes contending for the lock")
	rounds := fs.Int("rounds", 3, "critical sections each worker runs")
	hold := fs.Duration("hold", 300*time.Millisecond, "how long each worker holds the lock")
	key := fs.String("key", "consul-lock-demo", "lock KEY (Consul key locks/ephemeral/KEY)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: consul-lock demo [flags]\n\nWorker processes contend for one lock through `consul-lock exec` and take\nturns; the timeline shows each turn's fencing token and how long the worker\nwaited. Uses the agent at CONSUL_HTTP_ADDR when one answers there, else starts\na dev agent of its own (building Consul on first use) and stops it at the end.\nCtrl-C stops the workers, which release what they hold.\n\nExamples:\n  consul-lock demo\n  consul-lock demo -workers 8 -rounds 5 -hold 100ms\n  CONSUL_HTTP_ADDR=127.0.0.1:8500 consul-lock demo -key my-first-lock\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	if *workers < 1 || *rounds < 1 || *hold < 0 {
		return usageError{errors.New("-workers and -rounds must be at least 1, -hold not negative")}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	addr, cleanup, err := demoAgent(ctx, progress.New(s.errOut, false))
	if err != nil {
		return err
	}
	defer cleanup()

	t := &timeline{start: time.Now(), w: s.out}
	t.say("%d worker processes contend for locks/ephemeral/%s, %d turns each", *workers, *key, *rounds)
	var wg sync.WaitGroup
	errc := make(chan error, *workers)
	for w := 1; w <= *workers; w++ {
		wg.Go(func() {
			for range *rounds {
				if err := demoTurn(ctx, self, addr, *key, w, *hold, t); err != nil {
					errc <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if ctx.Err() != nil { // Ctrl-C: the workers stopped and released
		return exitError{130, "interrupted"}
	}
	if err := <-errc; err != nil {
		return err
	}
	t.say("done: %d critical sections, one at a time, tokens increasing", *workers**rounds)
	return nil
}

// demoTurn runs one `consul-lock exec` process of a worker and copies its
// output into the timeline.
func demoTurn(ctx context.Context, self, addr, key string, worker int, hold time.Duration, t *timeline) error {
	asked := strconv.FormatInt(time.Now().UnixNano(), 10)
	cmd := exec.CommandContext(ctx, self, "exec", "-http-addr", addr, "-timeout", "1m", key, "--",
		self, demoSectionCommand, strconv.Itoa(worker), asked, hold.String())
	// Interrupted, a worker is asked to stop as a user would ask it, so that
	// it releases what it holds; SIGKILL would leave its session and key.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		t.say("%s", sc.Text())
	}
	return cmd.Wait()
}

// runDemoSection is the critical section of a demo worker: WORKER ASKED HOLD.
func runDemoSection(ctx context.Context, args []string, s stdio) error {
	if len(args) != 3 {
		return usageError{errors.New(demoSectionCommand + " WORKER ASKED-UNIXNANO HOLD")}
	}
	asked, err1 := strconv.ParseInt(args[1], 10, 64)
	hold, err2 := time.ParseDuration(args[2])
	if err := errors.Join(err1, err2); err != nil {
		return usageError{err}
	}
	waited := time.Since(time.Unix(0, asked))
	fmt.Fprintf(s.out, "worker %s  acquired  token %-6s waited %7.1fms  session %.8s\n",
		args[0], os.Getenv("CONSUL_LOCK_TOKEN"), float64(waited)/float64(time.Millisecond), os.Getenv("CONSUL_LOCK_SESSION"))
	select {
	case <-time.After(hold):
	case <-ctx.Done():
	}
	fmt.Fprintf(s.out, "worker %s  releases\n", args[0])
	return nil
}

// timeline prints lines stamped with the time since the demo began.
type timeline struct {
	start time.Time
	mu    sync.Mutex
	w     io.Writer
}

func (t *timeline) say(format string, a ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "%8.3fs  "+format+"\n", append([]any{time.Since(t.start).Seconds()}, a...)...)
}

// demoAgent returns the address of the agent the environment names when it
// answers, else of a dev agent started for the demo. What it does goes to
// meter, which -q silences.
func demoAgent(ctx context.Context, meter *progress.Meter) (string, func(), error) {
	cfg := api.DefaultConfig()
	if c, err := api.NewClient(cfg); err == nil && answers(ctx, c) {
		meter.Say("using the Consul agent at " + cfg.Address)
		return cfg.Address, func() {}, nil
	}
	meter.Say("no Consul agent answers at " + cfg.Address + ": starting a dev agent")
	agent, cleanup, err := startDevAgent(ctx, meter)
	if err != nil {
		return "", nil, err
	}
	meter.Say("dev agent at " + agent.HTTPAddr())
	return agent.HTTPAddr(), cleanup, nil
}

func answers(ctx context.Context, c *api.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	return err == nil && leader != ""
}
