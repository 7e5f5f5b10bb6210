package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/bench"
	"github.com/consullock/consullock/internal/consultest"
)

func TestStatusListAndRelease(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	if r := cli(t, "status", key); r.code != 1 || !strings.Contains(r.out, "free") {
		t.Fatalf("status of a free lock: exit %d, %q; want 1 and free", r.code, r.out)
	}

	holder, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer holder.Release(context.Background())

	r := cli(t, "status", "-json", key)
	var info lockInfo
	if err := json.Unmarshal([]byte(r.out), &info); err != nil || r.code != 0 {
		t.Fatalf("status -json: exit %d, %q: %v", r.code, r.out, err)
	}
	if !info.Held || info.Session != holder.Session() || info.Token != holder.Token() || info.PID != os.Getpid() || info.LockedAt == "" {
		t.Fatalf("status -json = %+v, want held by session %s, token %d, pid %d", info, holder.Session(), holder.Token(), os.Getpid())
	}
	if r := cli(t, "status", key); r.code != 0 || !strings.Contains(r.out, "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("status: exit %d, %q", r.code, r.out)
	}

	r = cli(t, "list", "-json", key)
	var infos []lockInfo
	if err := json.Unmarshal([]byte(r.out), &infos); err != nil || len(infos) != 1 || infos[0].Key != holder.Key() {
		t.Fatalf("list -json %s = %q (%v), want the one lock", key, r.out, err)
	}
	if r := cli(t, "list", key); !strings.Contains(r.out, holder.Key()) || !strings.Contains(r.out, holder.Session()) {
		t.Fatalf("list: %q", r.out)
	}

	refuse := cliCommand(t, "release", key)
	refuse.Stdin = strings.NewReader("n\n")
	out, _ := refuse.Output()
	if refuse.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "About to release") {
		t.Fatalf("release answered no: exit %d, %q", refuse.ProcessState.ExitCode(), out)
	}
	select {
	case <-holder.Lost():
		t.Fatal("release answered no, yet the lock was lost")
	default:
	}

	if r := cli(t, "release", "-yes", key); r.code != 0 || !strings.Contains(r.out, "Released") {
		t.Fatalf("release -yes: exit %d, %q %q", r.code, r.out, r.errOut)
	}
	select {
	case <-holder.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("the holder did not learn that its lock was force-released")
	}
	assertGone(t, c, key)
}

// The demo's worker processes take turns: every "acquired" is followed by
// the same worker's "releases" before anyone else acquires, and the fencing
// tokens increase.
func TestDemoWorkersTakeTurns(t *testing.T) {
	t.Parallel()
	r := cli(t, "demo", "-workers", "3", "-rounds", "3", "-hold", "10ms", "-key", lockKey(t))
	if r.code != 0 {
		t.Fatalf("demo exited %d: %s", r.code, r.errOut)
	}
	holder, sections, lastToken := "", 0, 0
	for _, line := range strings.Split(r.out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[1] != "worker" {
			continue
		}
		switch who := f[2]; f[3] {
		case "acquired":
			token, _ := strconv.Atoi(f[5])
			if holder != "" || token <= lastToken {
				t.Fatalf("worker %s acquired (token %d, last %d) while %q held the lock:\n%s", who, token, lastToken, holder, r.out)
			}
			holder, lastToken = who, token
			sections++
		case "releases":
			if holder != who {
				t.Fatalf("worker %s released a lock held by %q:\n%s", who, holder, r.out)
			}
			holder = ""
		}
	}
	if sections != 9 {
		t.Fatalf("%d critical sections in the timeline, want 9:\n%s", sections, r.out)
	}
	if !strings.Contains(r.errOut, "using the Consul agent at") {
		t.Fatalf("demo did not use the agent at CONSUL_HTTP_ADDR: %s", r.errOut)
	}
}

// `consul-lock dev` starts an agent, prints the export line, and stops the
// agent cleanly on Ctrl-C.
func TestDevStartsAndStopsAnAgent(t *testing.T) {
	t.Parallel()
	cmd := cliCommand(t, "dev")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	proc := &osCmd{cmd: cmd, errOut: &strings.Builder{}}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "export CONSUL_HTTP_ADDR=")
	if err != nil || !ok {
		t.Fatalf("dev printed %q (%v), want the export line", line, err)
	}
	c := consultest.ClientAt(t, addr)
	if leader, err := c.Status().Leader(); err != nil || leader == "" {
		t.Fatalf("the dev agent at %s has no leader: %q %v", addr, leader, err)
	}
	cmd.Process.Signal(syscall.SIGINT)
	if code := proc.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("dev exited %d after Ctrl-C", code)
	}
	if _, err := c.Status().Leader(); err == nil {
		t.Fatalf("the dev agent at %s still answers after dev exited", addr)
	}
}

// `consul-lock bench` runs every case against the agent and reports them.
func TestBenchReportsEveryCase(t *testing.T) {
	t.Parallel()
	r := cli(t, "bench", "-cycles", "5", "-workers", "2", "-duration", "300ms", "-json")
	if r.code != 0 {
		t.Fatalf("bench exited %d: %s", r.code, r.errOut)
	}
	var report benchReport
	if err := json.Unmarshal([]byte(r.out), &report); err != nil {
		t.Fatalf("bench -json printed %q: %v", r.out, err)
	}
	if u, c := len(bench.Impls()), len(bench.ContendedImpls()); len(report.Uncontended) != u || len(report.Contended) != c {
		t.Fatalf("%d uncontended and %d contended results, want %d and %d", len(report.Uncontended), len(report.Contended), u, c)
	}
	for _, x := range append(report.Uncontended, report.Contended...) {
		if x.Cycles == 0 || x.P50 <= 0 || x.PerSecond <= 0 {
			t.Errorf("%s with %d workers measured nothing: %+v", x.Impl, x.Workers, x)
		}
	}
}

// Ctrl-C to the demo (SIGINT to its whole process group, as a terminal
// sends it) while a worker holds the lock and others wait stops every worker
// and leaves no session, no key and no process behind.
func TestDemoInterruptedLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	cmd := cliCommand(t, "demo", "-workers", "3", "-rounds", "1", "-hold", "1m", "-key", key)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out syncBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 10*time.Second, "a worker holds the lock and the others wait", func() bool {
		return strings.Contains(out.String(), "acquired") && countSessions(t, c, "locks/ephemeral/"+key) == 3
	})
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatal("demo did not stop within 20s of Ctrl-C")
	}
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("demo interrupted by Ctrl-C exited %d, want 130", code)
	}
	assertGone(t, c, key)
	consultest.Eventually(t, 5*time.Second, "no process of the demo left", func() bool {
		return syscall.Kill(-cmd.Process.Pid, 0) == syscall.ESRCH
	})
}

// syncBuffer is a bytes.Buffer that a process writes to while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// With no agent at CONSUL_HTTP_ADDR, the demo starts a dev agent of its
// own, runs on it, and stops it at the end.
func TestDemoStartsItsOwnAgent(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin, "demo", "-workers", "2", "-rounds", "1", "-hold", "10ms")
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=127.0.0.1:1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\n%s", err, errOut.String())
	}
	m := regexp.MustCompile(`dev agent at (\S+)`).FindStringSubmatch(errOut.String())
	if m == nil || !strings.Contains(out.String(), "done: 2 critical sections") {
		t.Fatalf("demo did not run on an agent of its own:\nstdout: %s\nstderr: %s", out.String(), errOut.String())
	}
	if conn, err := net.DialTimeout("tcp", m[1], time.Second); err == nil {
		conn.Close()
		t.Fatalf("the demo's agent at %s still answers after the demo ended", m[1])
	}
}
