package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/consullock/consullock/internal/consulagent"
)

func runDev(ctx context.Context, args []string, s stdio) error {
	stdout, stderr := s.out, s.errOut
	fs := flag.NewFlagSet("consul-lock dev", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: consul-lock dev\n\nStarts Consul as an in-memory dev agent on loopback, on free ports, prints\nthe line that points consul-lock and the consul command at it, and runs\nuntil interrupted.\n\n%s\n\nExample:\n  consul-lock dev &\n  export CONSUL_HTTP_ADDR=127.0.0.1:PORT   # as printed\n", whichConsul)
	}
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	agent, cleanup, err := startDevAgent(ctx, stderr)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(stdout, "export CONSUL_HTTP_ADDR=%s\n", agent.HTTPAddr())
	fmt.Fprintf(stderr, "Consul dev agent ready (log: %s); Ctrl-C stops it.\n", agent.LogPath())
	<-ctx.Done()
	fmt.Fprintln(stderr, "stopping the dev agent")
	return nil
}

// whichConsul says, for usage texts, which Consul binary dev, demo and bench
// run.
var whichConsul = "The Consul binary is, in order: $" + consulagent.EnvBinary + "; a Consul 1.x\n`consul` on PATH; the pinned v" + consulagent.Version + ", built from the consullock checkout\nthat consul-lock runs in (a few minutes, once)."

// consulBinary finds the Consul binary to run (see consulagent.Find) and
// says which one runs, and why, on progress.
func consulBinary(ctx context.Context, progress io.Writer) (consulagent.Found, error) {
	found, err := consulagent.Find(ctx, progress)
	if err == nil {
		fmt.Fprintf(progress, "consul-lock: running %s\n", found)
	}
	return found, err
}

// startDevAgent starts a dev agent of the Consul that consulBinary finds,
// in a temporary folder that cleanup removes.
func startDevAgent(ctx context.Context, progress io.Writer) (*consulagent.Agent, func(), error) {
	found, err := consulBinary(ctx, progress)
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "consul-lock-dev-")
	if err != nil {
		return nil, nil, err
	}
	agent, err := consulagent.Start(ctx, consulagent.Options{Bin: found.Path, Dir: dir, Name: "consul-lock-dev", Dev: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return agent, func() { agent.Stop(); os.RemoveAll(dir) }, nil
}
