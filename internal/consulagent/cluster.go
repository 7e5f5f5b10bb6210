package consulagent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Cluster is a set of Consul servers on loopback that elected a leader.
type Cluster struct {
	Servers []*Agent
}

// StartCluster starts n servers in dir that join each other, and waits until
// each of them knows the leader and passes its serfHealth check.
func StartCluster(ctx context.Context, bin, dir string, n int) (*Cluster, error) {
	c := &Cluster{}
	ports := make([]Ports, n)
	for i := range ports {
		p, err := freePorts()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	for i := range n {
		var join []string
		for j, p := range ports {
			if j != i {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", p.SerfLAN))
			}
		}
		a := &Agent{Ports: ports[i], opts: Options{
			Bin: bin, Dir: filepath.Join(dir, fmt.Sprintf("s%d", i+1)), Name: fmt.Sprintf("s%d", i+1),
			BootstrapExpect: n, Join: join,
		}}
		if err := a.ensureDir(); err != nil {
			c.Stop()
			return nil, err
		}
		if err := a.start(); err != nil {
			c.Stop()
			return nil, err
		}
		c.Servers = append(c.Servers, a)
	}
	for _, a := range c.Servers {
		if err := a.WaitReady(ctx); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
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

// Stop stops every server.
func (c *Cluster) Stop() {
	for _, a := range c.Servers {
		a.Kill()
	}
}
