package consulagent_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

func TestMain(m *testing.M) { consultest.Main(m) }

// processGone reports whether no process of the agent's group is left.
func processGone(pid int) bool {
	return syscall.Kill(-pid, 0) == syscall.ESRCH
}

func TestDevAgentStartsAndStopsCleanly(t *testing.T) {
	t.Parallel()
	a := consultest.DevAgent(t)
	c := consultest.ClientOf(t, a)
	leader, err := c.Status().Leader()
	if err != nil || leader == "" {
		t.Fatalf("dev agent has no leader: %q, %v", leader, err)
	}
	if _, err := c.KV().Put(&api.KVPair{Key: "x", Value: []byte("y")}, nil); err != nil {
		t.Fatalf("dev agent refuses a write: %v", err)
	}
	pid := a.PID()
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if a.Running() || !processGone(pid) {
		t.Fatalf("agent process group %d still alive after Stop", pid)
	}
}

// A 3-server cluster elects a leader; killing it elects another, and the
// killed server rejoins when restarted.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	t.Parallel()
	cl := consultest.Cluster(t, 3)
	ctx := context.Background()
	old, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	var next *consulagent.Agent
	consultest.Eventually(t, 30*time.Second, "a new leader is elected", func() bool {
		next, err = cl.Leader(ctx)
		return err == nil && next != old
	})
	t.Logf("new leader %s elected %v after %s was killed", next.Name(), time.Since(killed).Round(time.Millisecond), old.Name())
	if err := old.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := old.WaitReady(ctx); err != nil {
		t.Fatalf("restarted server not ready: %v", err)
	}
	pids := make([]int, 0, len(cl.Servers))
	for _, s := range cl.Servers {
		pids = append(pids, s.PID())
	}
	cl.Stop()
	for _, pid := range pids {
		if !processGone(pid) {
			t.Fatalf("process group %d still alive after the cluster stopped", pid)
		}
	}
}

// Client agents join the servers and forward to them: a session made
// through a client agent belongs to its node, a write through one is read
// through the other, and a killed client agent rejoins when restarted.
func TestClientAgentsJoinAndForward(t *testing.T) {
	t.Parallel()
	cl := consultest.Topology(t, consulagent.Topology{Servers: 1, Clients: 2})
	c1, c2 := consultest.ClientOf(t, cl.Clients[0]), consultest.ClientOf(t, cl.Clients[1])
	id, _, err := c1.Session().Create(&api.SessionEntry{TTL: "10s", LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatalf("create a session through c1: %v", err)
	}
	s, _, err := c2.Session().Info(id, nil)
	if err != nil || s == nil || s.Node != "c1" {
		t.Fatalf("session through c1 read through c2: %+v, %v; want node c1", s, err)
	}
	if _, err := c1.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	kv, _, err := c2.KV().Get("k", nil)
	if err != nil || kv == nil || string(kv.Value) != "v" {
		t.Fatalf("write through c1 read through c2: %+v, %v", kv, err)
	}
	if err := cl.Clients[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Clients[0].Restart(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Clients[0].WaitReady(context.Background()); err != nil {
		t.Fatalf("restarted client agent not ready: %v", err)
	}
	if _, _, err := c1.KV().Get("k", nil); err != nil {
		t.Fatalf("restarted client agent does not answer: %v", err)
	}
}
