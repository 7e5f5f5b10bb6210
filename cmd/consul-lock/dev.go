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
		fmt.Fprintf(fs.Output(), "Usage: consul-lock dev\n\nStarts Consul v%s as an in-memory dev agent on loopback, on free ports\n(building it on first use), prints the line that points consul-lock and\nthe consul command at it, and runs until interrupted.\n\nExample:\n  consul-lock dev &\n  export CONSUL_HTTP_ADDR=127.0.0.1:PORT   # as printed\n", consulagent.Version)
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
	fmt.Fprintf(stderr, "Consul v%s dev agent ready (log: %s); Ctrl-C stops it.\n", consulagent.Version, agent.LogPath())
	<-ctx.Done()
	fmt.Fprintln(stderr, "stopping the dev agent")
	return nil
}

// startDevAgent builds the pinned Consul if needed and starts a dev agent
// in a temporary folder that cleanup removes.
func startDevAgent(ctx context.Context, progress io.Writer) (*consulagent.Agent, func(), error) {
	bin, err := consulagent.Binary(ctx, progress)
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "consul-lock-dev-")
	if err != nil {
		return nil, nil, err
	}
	agent, err := consulagent.Start(ctx, consulagent.Options{Bin: bin, Dir: dir, Name: "consul-lock-dev", Dev: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return agent, func() { agent.Stop(); os.RemoveAll(dir) }, nil
}
