package consulagent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/consul/api"
)

// Topology is the shape of a cluster: servers, and client agents joined to
// them, as production runs one on each application host.
type Topology struct {
	Servers, Clients int
}

// Cluster is a set of Consul servers on loopback that elected a leader, and
// the client agents that joined them.
type Cluster struct {
	Servers []*Agent
	Clients []*Agent // named c1, c2, ...
}

// StartCluster starts n servers in dir that join each other: see
// StartTopology.
func StartCluster(ctx context.Context, bin, dir string, n int) (*Cluster, error) {
	return StartTopology(ctx, bin, dir, Topology{Servers: n})
}

// StartTopology starts t's servers and client agents in dir, and waits until
// each of them knows the leader and passes its serfHealth check. An agent
// that exits before it is ready (another process took a port it was given)
// makes it start the whole cluster again on new ports, up to three times.
func StartTopology(ctx context.Context, bin, dir string, t Topology) (*Cluster, error) {
	if t.Servers < 1 || t.Clients < 0 {
		return nil, fmt.Errorf("consulagent: a cluster needs at least one server and no negative number of clients, not %+v", t)
	}
	var err error
	for try := range 3 {
		var c *Cluster
		c, err = startOnce(ctx, bin, filepath.Join(dir, fmt.Sprintf("try%d", try+1)), t)
		if err == nil {
			return c, nil
		}
		var exited *exitError
		if !errors.As(err, &exited) || ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

func startOnce(ctx context.Context, bin, dir string, t Topology) (*Cluster, error) {
	ports, err := distinctFreePorts(t.Servers + t.Clients)
	if err != nil {
		return nil, err
	}
	var join []string
	for _, p := range ports[:t.Servers] {
		join = append(join, fmt.Sprintf("127.0.0.1:%d", p.SerfLAN))
	}
	c := &Cluster{}
	for i, p := range ports {
		opts := Options{Bin: bin, BootstrapExpect: t.Servers, Join: join}
		if i < t.Servers {
			opts.Name = fmt.Sprintf("s%d", i+1)
		} else {
			opts.Name, opts.Client = fmt.Sprintf("c%d", i-t.Servers+1), true
		}
		opts.Dir = filepath.Join(dir, opts.Name)
		a := &Agent{Ports: p, opts: opts}
		if err := a.ensureDir(); err != nil {
			c.Stop()
			return nil, err
		}
		if err := a.start(); err != nil {
			c.Stop()
			return nil, err
		}
		if opts.Client {
			c.Clients = append(c.Clients, a)
		} else {
			c.Servers = append(c.Servers, a)
		}
	}
	if err := c.waitAllReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// distinctFreePorts returns n sets of free ports with no port in two sets:
// the kernel may hand out a port it just gave, once it is closed again.
func distinctFreePorts(n int) ([]Ports, error) {
	seen := map[int]bool{}
	var out []Ports
	for len(out) < n {
		p, err := freePorts()
		if err != nil {
			return nil, err
		}
		if seen[p.HTTP] || seen[p.Server] || seen[p.SerfLAN] || p.HTTP == p.Server || p.HTTP == p.SerfLAN || p.Server == p.SerfLAN {
			continue
		}
		seen[p.HTTP], seen[p.Server], seen[p.SerfLAN] = true, true, true
		out = append(out, p)
	}
	return out, nil
}

// waitAllReady waits until every agent is ready, and fails at once, with
// that agent's log, when one of them exits: its peers would wait for it in
// vain until the deadline.
func (c *Cluster) waitAllReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	pending := c.Agents()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for len(pending) > 0 {
		var still []*Agent
		for _, a := range pending {
			if err := a.exitedEarly(); err != nil {
				return err
			}
			if !a.isReady(ctx) {
				still = append(still, a)
			}
		}
		if pending = still; len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul agent %s not ready after %v: %w; log:\n%s", pending[0].opts.Name, readyTimeout, ctx.Err(), pending[0].logTail())
		case <-tick.C:
		}
	}
	return nil
}

// Agents returns the servers and then the client agents.
func (c *Cluster) Agents() []*Agent {
	return append(append([]*Agent(nil), c.Servers...), c.Clients...)
}

// Leader returns the running server that a running server reports as the
// Raft leader: a killed leader is not returned, even while its followers
// have not yet noticed.
func (c *Cluster) Leader(ctx context.Context) (*Agent, error) {
	for _, a := range c.Servers {
		if !a.Running() {
			continue
		}
		cl, closeIdle, err := a.Client()
		if err != nil {
			return nil, err
		}
		addr, err := cl.Status().Leader()
		closeIdle()
		if err != nil || addr == "" {
			continue
		}
		for _, s := range c.Servers {
			if addr == fmt.Sprintf("127.0.0.1:%d", s.Ports.Server) && s.Running() {
				return s, nil
			}
		}
	}
	return nil, errors.New("no server knows a leader")
}

// Followers returns the servers other than leader.
func (c *Cluster) Followers(leader *Agent) []*Agent {
	var out []*Agent
	for _, s := range c.Servers {
		if s != leader {
			out = append(out, s)
		}
	}
	return out
}

// WaitLeader waits until a running server reports a leader.
func (c *Cluster) WaitLeader(ctx context.Context) (*Agent, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		if a, err := c.Leader(ctx); err == nil {
			return a, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader within %v: %w", readyTimeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitHealthy waits until autopilot reports every server healthy and a
// voter, so that (with three or more) one can fail without an outage. A
// server restarted after a kill votes again only once autopilot's
// stabilization time (10 s by default) has passed: killing the leader
// before then can leave the others without a quorum, as in production.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		if c.healthy(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy within %v: %w", readyTimeout, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) healthy(ctx context.Context) bool {
	leader, err := c.Leader(ctx)
	if err != nil {
		return false
	}
	cl, closeIdle, err := leader.Client()
	if err != nil {
		return false
	}
	defer closeIdle()
	reply, err := cl.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx))
	if err != nil || !reply.Healthy || len(reply.Servers) != len(c.Servers) {
		return false
	}
	for _, s := range reply.Servers {
		if !s.Voter || !s.Healthy {
			return false
		}
	}
	return true
}

// Stop kills every agent.
func (c *Cluster) Stop() {
	for _, a := range c.Agents() {
		a.Kill()
	}
}
