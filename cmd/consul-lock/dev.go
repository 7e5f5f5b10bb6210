package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/consullock/consullock/internal/consulagent"
)

// The sizes of cluster that dev -servers and -clients start: Consul advises
// 3 or 5 servers, and more than 7 only slow its writes.
const (
	maxDevServers = 7
	maxDevClients = 16
)

const devUsage = `Usage: consul-lock dev [-servers N] [-clients M]

Starts Consul on loopback, on free ports, prints the line that points
consul-lock and the consul command at it, and runs until interrupted, then
stops it. With no flags it is one in-memory dev agent.

With -servers and -clients it is a cluster in a temporary folder (removed
on exit): N servers (1 to 7) and M client agents (0 to 16), named s1, s2,
... and c1, c2, ..., as production runs a client agent on each application
host. It prints an export line for each client agent (for the first server
when there are none), and on stderr a table of the agents: name, role, HTTP
address, PID and log. A session made through a client agent belongs to its
node; kill -STOP PID freezes an agent, kill -CONT PID thaws it.

%s

Examples:
  consul-lock dev &
  export CONSUL_HTTP_ADDR=127.0.0.1:PORT   # as printed
  consul-lock dev -servers 3 -clients 2    # two hosts, each with its agent

Flags:
`

// devFlags are the flags of dev: the size of the cluster.
type devFlags struct {
	servers, clients int
}

func runDev(ctx context.Context, args []string, s stdio) error {
	var f devFlags
	fs := flag.NewFlagSet("consul-lock dev", flag.ContinueOnError)
	fs.IntVar(&f.servers, "servers", 1, fmt.Sprintf("start a cluster of `N` servers (1 to %d); 1 with no -clients is the dev agent", maxDevServers))
	fs.IntVar(&f.clients, "clients", 0, fmt.Sprintf("start `M` client agents joined to the servers (0 to %d)", maxDevClients))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), devUsage, whichConsul)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, s, 0, 0); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	if f.servers == 1 && f.clients == 0 {
		return runDevAgent(ctx, s)
	}
	return runDevCluster(ctx, consulagent.Topology{Servers: f.servers, Clients: f.clients}, s)
}

// validate refuses cluster sizes out of range, before anything starts.
func (f devFlags) validate() error {
	switch {
	case f.servers < 1 || f.servers > maxDevServers:
		return usageError{fmt.Errorf("-servers %d: a cluster has 1 to %d servers", f.servers, maxDevServers)}
	case f.clients < 0 || f.clients > maxDevClients:
		return usageError{fmt.Errorf("-clients %d: a cluster has 0 to %d client agents", f.clients, maxDevClients)}
	}
	return nil
}

// runDevAgent runs one dev agent until ctx ends.
func runDevAgent(ctx context.Context, s stdio) error {
	agent, cleanup, err := startDevAgent(ctx, s.errOut)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(s.out, "export CONSUL_HTTP_ADDR=%s\n", agent.HTTPAddr())
	fmt.Fprintf(s.errOut, "Consul dev agent ready (log: %s); Ctrl-C stops it.\n", agent.LogPath())
	<-ctx.Done()
	fmt.Fprintln(s.errOut, "stopping the dev agent")
	return nil
}

// runDevCluster runs the servers and client agents of t until ctx ends.
func runDevCluster(ctx context.Context, t consulagent.Topology, s stdio) error {
	found, err := consulBinary(ctx, s.errOut)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "consul-lock-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(s.errOut, "consul-lock: starting %d servers and %d client agents\n", t.Servers, t.Clients)
	cluster, err := consulagent.StartTopology(ctx, found.Path, dir, t)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted while the cluster started")
		}
		return err
	}
	// Killed: nothing of theirs outlives the folder, and a client agent
	// sent SIGTERM spends seconds leaving the cluster gracefully.
	defer cluster.Stop()
	printAgents(s.errOut, cluster)
	entry := cluster.Clients
	if len(entry) == 0 {
		entry = cluster.Servers[:1]
	}
	for _, a := range entry {
		fmt.Fprintf(s.out, "export CONSUL_HTTP_ADDR=%s   # %s\n", a.HTTPAddr(), a.Name())
	}
	fmt.Fprintln(s.errOut, "Consul cluster ready; Ctrl-C stops it.")
	<-ctx.Done()
	fmt.Fprintf(s.errOut, "stopping the %d agents\n", len(cluster.Agents()))
	return nil
}

// printAgents writes the table of the cluster's agents to w.
func printAgents(w io.Writer, c *consulagent.Cluster) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tHTTP ADDRESS\tPID\tLOG")
	row := func(a *consulagent.Agent, role string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", a.Name(), role, a.HTTPAddr(), a.PID(), a.LogPath())
	}
	for _, a := range c.Servers {
		row(a, "server")
	}
	for _, a := range c.Clients {
		row(a, "client")
	}
	tw.Flush()
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
