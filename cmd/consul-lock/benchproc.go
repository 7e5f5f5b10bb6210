package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/bench"
	"github.com/consullock/consullock/internal/progress"
)

// Contention across processes (bench -processes): each worker is an OS
// process of its own, with its own Consul client, as on different hosts.

// benchWorkerCommand is the hidden command that each worker process runs:
// it waits for the common start, cycles on the key until the common end,
// and prints what it measured as JSON.
const benchWorkerCommand = "bench-worker"

// processImpls are the implementations compared across processes.
var processImpls = []bench.Impl{bench.TicketFloor, bench.Locker, bench.LockerFair, bench.Ephemeral, bench.ConsulAPI}

// runProcesses runs one case: n worker processes of impl on one key, for d.
func runProcesses(ctx context.Context, addr string, impl bench.Impl, n int, d, hold time.Duration, meter *progress.Meter) (bench.Result, error) {
	exe, err := os.Executable()
	if err != nil {
		return bench.Result{}, err
	}
	key := fmt.Sprintf("bench-proc-%d-%d", n, time.Now().UnixNano())
	start := time.Now().Add(time.Second + time.Duration(n)*50*time.Millisecond) // time for the processes to start
	meter.Show(fmt.Sprintf("bench: %s, %d processes, %v", impl.Name, n, d))
	workers := make([]bench.Worker, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, exe, benchWorkerCommand, impl.ID, key,
				strconv.FormatInt(start.UnixNano(), 10), d.String(), hold.String())
			cmd.Env = append(os.Environ(), api.HTTPAddrEnvName+"="+addr)
			var out, errOut bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errOut
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("worker %d: %w: %s", i, err, bytes.TrimSpace(errOut.Bytes()))
				return
			}
			if err := json.Unmarshal(out.Bytes(), &workers[i]); err != nil {
				errs[i] = fmt.Errorf("worker %d: %w", i, err)
			} else if workers[i].Err != "" {
				errs[i] = fmt.Errorf("worker %d: %s", i, workers[i].Err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return bench.Result{}, fmt.Errorf("%s, %d processes: %w", impl.Name, n, err)
	}
	logs := make([][]bench.Cycle, n)
	var acquires, attempts int64
	for i, w := range workers {
		logs[i] = w.Cycles
		acquires += w.Acquires
		attempts += w.Attempts
	}
	res := bench.Merge(impl.Name, logs, acquires, attempts, d.Seconds())
	res.Processes = true
	return res, nil
}

// runBenchWorker is one worker process: IMPL KEY START-UNIXNANO DURATION HOLD.
func runBenchWorker(ctx context.Context, args []string, s stdio) error {
	if len(args) != 5 {
		return usageError{errors.New(benchWorkerCommand + " IMPL KEY START-UNIXNANO DURATION HOLD")}
	}
	impl, ok := bench.ImplByID(args[0])
	start, err1 := strconv.ParseInt(args[2], 10, 64)
	d, err2 := time.ParseDuration(args[3])
	hold, err3 := time.ParseDuration(args[4])
	if err := errors.Join(err1, err2, err3); err != nil || !ok {
		return usageError{fmt.Errorf("%s: bad arguments %q: %v", benchWorkerCommand, args, err)}
	}
	cfg := tunedConfig()
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	begin := time.Unix(0, start)
	select {
	case <-time.After(time.Until(begin)):
	case <-ctx.Done():
		return ctx.Err()
	}
	ctx, cancel := context.WithDeadline(ctx, begin.Add(d))
	defer cancel()
	w := bench.RunWorker(ctx, c, impl, args[1], hold)
	return json.NewEncoder(s.out).Encode(w)
}
