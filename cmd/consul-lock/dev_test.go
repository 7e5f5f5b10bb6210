package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

// `consul-lock dev` on a machine with a Consul on PATH (a script that execs
// the pinned build) and no CONSULLOCK_CONSUL_BIN runs that consul, says so,
// and is ready within seconds: it builds nothing.
func TestDevUsesTheConsulOnPath(t *testing.T) {
	t.Parallel()
	pinned := os.Getenv(consulagent.EnvBinary)
	if pinned == "" {
		t.Skip(consulagent.EnvBinary + " is not set: the pinned build is not at hand to stand for an installed Consul")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "consul")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec \""+pinned+"\" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := cliCommand(t, "dev")
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool {
		return strings.HasPrefix(kv, consulagent.EnvBinary+"=") || strings.HasPrefix(kv, "PATH=")
	})
	cmd.Env = append(cmd.Env, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	var errOut syncBuffer
	cmd.Stderr = &errOut
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	proc := &osCmd{cmd: cmd, errOut: &strings.Builder{}}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "export CONSUL_HTTP_ADDR=") {
		t.Fatalf("dev printed %q (%v), want the export line; stderr:\n%s", line, err, errOut.String())
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("dev took %v to be ready with a Consul on PATH", took)
	}
	if want := "running Consul v" + consulagent.Version + " at " + fake + " (from PATH)"; !strings.Contains(errOut.String(), want) {
		t.Errorf("dev did not say %q:\n%s", want, errOut.String())
	}
	cmd.Process.Signal(syscall.SIGINT)
	if code := proc.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("dev exited %d after Ctrl-C", code)
	}
}

// `consul-lock dev -servers N -clients M` starts that cluster and prints an
// export line for each client agent (for the first server when there are
// none) and a table of the agents: the addresses answer, a session made
// through a client agent belongs to its node, and Ctrl-C leaves no agent
// process and no folder behind.
func TestDevTopology(t *testing.T) {
	t.Parallel()
	if os.Getenv(consulagent.EnvBinary) == "" {
		t.Skip(consulagent.EnvBinary + " is not set: dev would build Consul")
	}
	for _, tc := range []struct {
		servers, clients string
		entries          []string // the agents that the export lines point at
		agents           int
	}{
		{"1", "2", []string{"c1", "c2"}, 3},
		{"3", "0", []string{"s1"}, 3},
	} {
		t.Run("-servers "+tc.servers+" -clients "+tc.clients, func(t *testing.T) {
			t.Parallel()
			dev, addrs, errOut := startDev(t, len(tc.entries), "-servers", tc.servers, "-clients", tc.clients)
			var rows []agentRow
			consultest.Eventually(t, 10*time.Second, "dev printed the table of its agents", func() bool {
				rows = agentRows(errOut.String())
				return len(rows) == tc.agents
			})
			for i, name := range tc.entries {
				if addrs[i].name != name || addrOf(rows, name) != addrs[i].addr {
					t.Errorf("export line %d points at %s %s, want %s at %s", i+1, addrs[i].name, addrs[i].addr, name, addrOf(rows, name))
				}
				assertSessionOnNode(t, addrs[i].addr, name)
			}
			for _, r := range rows {
				if !alive(r.pid) {
					t.Errorf("agent %s (pid %d) is not running", r.name, r.pid)
				}
			}
			dev.cmd.Process.Signal(syscall.SIGINT)
			if code := dev.wait(t, 15*time.Second); code != 0 {
				t.Fatalf("dev exited %d after Ctrl-C; stderr:\n%s", code, errOut)
			}
			for _, r := range rows {
				if alive(r.pid) {
					t.Errorf("agent %s (pid %d) still runs after dev exited", r.name, r.pid)
				}
				if _, err := os.Stat(r.log); !os.IsNotExist(err) {
					t.Errorf("agent %s's log %s is still there after dev exited: %v", r.name, r.log, err)
				}
			}
		})
	}
}

// Bad sizes are refused with exit status 64 and a message naming the flag,
// before anything starts: not even the Consul binary is run.
func TestDevRefusesBadSizes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	fake := filepath.Join(dir, "consul")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\ntouch \""+ran+"\"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ args, want []string }{
		{[]string{"-servers", "0"}, []string{"-servers 0", "1 to 7"}},
		{[]string{"-servers", "9"}, []string{"-servers 9", "1 to 7"}},
		{[]string{"-clients", "-1"}, []string{"-clients -1", "0 to 16"}},
		{[]string{"-servers", "3", "-clients", "17"}, []string{"-clients 17", "0 to 16"}},
		{[]string{"-servers", "three"}, []string{"-servers"}},
		{[]string{"-servers", "3", "extra"}, []string{`"extra"`}},
	} {
		cmd := cliCommand(t, append([]string{"dev"}, tc.args...)...)
		cmd.Env = append(cmd.Env, consulagent.EnvBinary+"="+fake)
		var errOut strings.Builder
		cmd.Stderr = &errOut
		cmd.Run()
		code := cmd.ProcessState.ExitCode()
		msg := lastLine(errOut.String())
		if code != exitUsage || !containsAll(msg, tc.want) {
			t.Errorf("dev %q exited %d saying %q, want %d naming %q", tc.args, code, msg, exitUsage, tc.want)
		}
	}
	if exists(ran) {
		t.Fatal("dev ran the Consul binary for a bad size")
	}
}

// exported is what an export line of dev says: the address and the agent.
type exported struct{ addr, name string }

// startDev starts `consul-lock dev` with args and reads its n export lines.
func startDev(t *testing.T, n int, args ...string) (*osCmd, []exported, *syncBuffer) {
	t.Helper()
	cmd := cliCommand(t, append([]string{"dev"}, args...)...)
	errOut := &syncBuffer{}
	cmd.Stderr = errOut
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	var addrs []exported
	for range n {
		line, err := r.ReadString('\n')
		f := strings.Fields(line)
		if err != nil || len(f) != 4 || !strings.HasPrefix(f[1], "CONSUL_HTTP_ADDR=") || f[2] != "#" {
			t.Fatalf("dev printed %q (%v), want export CONSUL_HTTP_ADDR=ADDR # NAME; stderr:\n%s", line, err, errOut)
		}
		addrs = append(addrs, exported{strings.TrimPrefix(f[1], "CONSUL_HTTP_ADDR="), f[3]})
	}
	return &osCmd{cmd: cmd, errOut: &strings.Builder{}}, addrs, errOut
}

// agentRow is a row of dev's table of agents.
type agentRow struct {
	name, role, addr string
	pid              int
	log              string
}

// agentRows parses the rows of dev's table of agents in its stderr.
func agentRows(stderr string) []agentRow {
	var rows []agentRow
	for _, line := range strings.Split(stderr, "\n") {
		f := strings.Fields(line)
		if len(f) != 5 || (f[1] != "server" && f[1] != "client") {
			continue
		}
		pid, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		rows = append(rows, agentRow{f[0], f[1], f[2], pid, f[4]})
	}
	return rows
}

// addrOf is the HTTP address of the agent name in rows.
func addrOf(rows []agentRow, name string) string {
	for _, r := range rows {
		if r.name == name {
			return r.addr
		}
	}
	return ""
}

// assertSessionOnNode creates a session through the agent at addr, checks
// that it belongs to node, and destroys it.
func assertSessionOnNode(t *testing.T, addr, node string) {
	t.Helper()
	c := consultest.ClientAt(t, addr)
	id, _, err := c.Session().Create(&api.SessionEntry{Name: t.Name(), TTL: "10s"}, nil)
	if err != nil {
		t.Fatalf("create a session through %s (%s): %v", node, addr, err)
	}
	defer c.Session().Destroy(id, nil)
	info, _, err := c.Session().Info(id, nil)
	if err != nil || info == nil || info.Node != node {
		t.Fatalf("session made through %s (%s) is %+v (%v), want one of node %s", node, addr, info, err, node)
	}
}

// lastLine is the last line of s that is not empty.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
