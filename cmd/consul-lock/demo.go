package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("consul-lock demo", flag.ContinueOnError)
	workers := fs.Int("workers", 4, "`number` of workers contending for the lock")
	rounds := fs.Int("rounds", 3, "critical sections each worker runs")
	hold := fs.Duration("hold", 300*time.Millisecond, "how long each worker holds the lock")
	key := fs.String("key", "consul-lock-demo", "lock name (key locks/ephemeral/NAME)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: consul-lock demo [flags]\n\nWorkers contend for one lock and take turns; the timeline shows who held\nit, for how long, and how long each waited. Uses the agent at\nCONSUL_HTTP_ADDR when one answers there, else starts a dev agent of its own\n(building Consul on first use) and stops it at the end.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *workers < 1 || *rounds < 1 || *hold < 0 {
		return usageError{errors.New("-workers and -rounds must be at least 1, -hold not negative")}
	}
	client, cleanup, err := demoClient(ctx, stderr)
	if err != nil {
		return err
	}
	defer cleanup()

	start := time.Now()
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, "%8.3fs  "+format+"\n", append([]any{time.Since(start).Seconds()}, a...)...)
	}
	say("%d workers contend for locks/ephemeral/%s, %d turns each", *workers, *key, *rounds)
	var wg sync.WaitGroup
	errc := make(chan error, *workers)
	for w := 1; w <= *workers; w++ {
		wg.Go(func() { errc <- demoWorker(ctx, client, w, *rounds, *key, *hold, say) })
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	say("done: %d critical sections, one at a time", *workers**rounds)
	return nil
}

func demoWorker(ctx context.Context, c *api.Client, id, rounds int, key string, hold time.Duration, say func(string, ...any)) error {
	for range rounds {
		lock, err := consullock.NewEphemeralLock(key, consullock.WithClient(c), consullock.WithAcquireTimeout(time.Minute))
		if err != nil {
			return err
		}
		asked := time.Now()
		err = lock.Hold(ctx, func(ctx context.Context) error {
			say("worker %d  acquired after waiting %6.1fms  session %.8s", id, ms(time.Since(asked)), lock.Session())
			t := time.NewTimer(hold)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			say("worker %d  releases", id)
			return nil
		})
		if err != nil {
			return fmt.Errorf("worker %d: %w", id, err)
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// demoClient returns a client of the agent the environment names when it
// answers, else of a dev agent started for the demo.
func demoClient(ctx context.Context, stderr io.Writer) (*api.Client, func(), error) {
	cfg := api.DefaultConfig()
	if c, err := api.NewClient(cfg); err == nil && answers(ctx, c) {
		fmt.Fprintf(stderr, "using the Consul agent at %s\n", cfg.Address)
		return c, func() {}, nil
	}
	fmt.Fprintf(stderr, "no Consul agent answers at %s: starting a dev agent\n", cfg.Address)
	agent, cleanup, err := startDevAgent(ctx, stderr)
	if err != nil {
		return nil, nil, err
	}
	c, closeIdle, err := agent.Client()
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	fmt.Fprintf(stderr, "dev agent at %s\n", agent.HTTPAddr())
	return c, func() { closeIdle(); cleanup() }, nil
}

func answers(ctx context.Context, c *api.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	return err == nil && leader != ""
}
