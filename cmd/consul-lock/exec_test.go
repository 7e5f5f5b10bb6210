package main

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

func TestExecRunsCommandUnderTheLock(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	r := cli(t, "exec", key, "--", "sh", "-c", `echo "$CONSUL_LOCK_KEY $CONSUL_LOCK_SESSION $CONSUL_LOCK_TOKEN"; exit 3`)
	if r.code != 3 {
		t.Fatalf("exit %d, want the command's 3 (stderr: %s)", r.code, r.errOut)
	}
	env := regexp.MustCompile(`^locks/ephemeral/(\S+) ([0-9a-f-]{36}) ([1-9][0-9]*)\n$`).FindStringSubmatch(r.out)
	if env == nil || env[1] != key {
		t.Fatalf("command saw %q, want CONSUL_LOCK_KEY, CONSUL_LOCK_SESSION and CONSUL_LOCK_TOKEN", r.out)
	}
	assertGone(t, c, key)
}

func TestExecExitStatuses(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"success", []string{"true"}, 0},
		{"failure", []string{"sh", "-c", "exit 42"}, 42},
		{"killed by SIGTERM", []string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
		{"not found", []string{"/no/such/command"}, exitNotFound},
	} {
		if r := cli(t, append([]string{"exec", key, "--"}, tc.args...)...); r.code != tc.want {
			t.Errorf("%s: exit %d, want %d (stderr: %s)", tc.name, r.code, tc.want, r.errOut)
		}
	}
	assertGone(t, c, key)

	holder, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer holder.Release(context.Background())
	for _, tc := range []struct {
		name string
		args []string
		want int
		took time.Duration
	}{
		{"-try on a held lock", []string{"-try"}, exitConflict, 0},
		{"-conflict-exit-code", []string{"-try", "-conflict-exit-code", "9"}, 9, 0},
		{"-timeout on a held lock", []string{"-timeout", "500ms"}, exitConflict, 500 * time.Millisecond},
	} {
		start := time.Now()
		r := cli(t, append(append([]string{"exec"}, tc.args...), key, "--", "sh", "-c", "echo ran")...)
		if r.code != tc.want || r.out != "" || time.Since(start) < tc.took {
			t.Errorf("%s: exit %d after %v with output %q, want %d, no output, not before %v", tc.name, r.code, time.Since(start), r.out, tc.want, tc.took)
		}
	}
	if n := countSessions(t, c, holder.Key()); n != 1 {
		t.Fatalf("%d sessions for %s, want only the holder's", n, holder.Key())
	}
}

func TestExecUnreachableAgentExits69(t *testing.T) {
	t.Parallel()
	cmd := cliCommand(t, "exec", lockKey(t), "--", "true")
	cmd.Env = append(cmd.Env, "CONSUL_HTTP_ADDR=127.0.0.1:1")
	var errb strings.Builder
	cmd.Stderr = &errb
	cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != exitUnavailable || !strings.Contains(errb.String(), "127.0.0.1:1") || !strings.Contains(errb.String(), "consul-lock dev") {
		t.Fatalf("exit %d, stderr %q: want 69 naming the address and how to start an agent", code, errb.String())
	}
}

// 6 processes run `consul-lock exec` 20 times each on one key; their
// critical sections, logged by the commands themselves, never overlap.
func TestExecProcessesNeverOverlap(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	logPath := filepath.Join(t.TempDir(), "sections.log")
	const procs, runs = 6, 20
	section := `echo "start $$" >> "$1"; sleep 0.01; echo "end $$" >> "$1"`
	var wg sync.WaitGroup
	for range procs {
		wg.Go(func() {
			for range runs {
				if r := cli(t, "exec", "-timeout", "2m", key, "--", "sh", "-c", section, "sh", logPath); r.code != 0 {
					t.Errorf("exec exited %d: %s", r.code, r.errOut)
				}
			}
		})
	}
	wg.Wait()
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2*procs*runs {
		t.Fatalf("%d log lines, want %d", len(lines), 2*procs*runs)
	}
	for i := 0; i < len(lines); i += 2 {
		start, end := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if start[0] != "start" || end[0] != "end" || start[1] != end[1] {
			t.Fatalf("critical sections overlap at line %d: %q then %q", i+1, lines[i], lines[i+1])
		}
	}
	assertGone(t, c, key)
}

// startExec starts `consul-lock exec` with a command that prints "ready PID"
// once it runs, and returns the command's pid.
func startExec(t *testing.T, script string, args ...string) (*osCmd, int) {
	t.Helper()
	cmd := cliCommand(t, append(append([]string{"exec"}, args...), "--", "sh", "-c", `echo "ready $$"; `+script)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("command did not start: %v; stderr: %s", err, errb.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ready ")))
	if err != nil {
		t.Fatalf("bad ready line %q", line)
	}
	return &osCmd{cmd, &errb}, pid
}

// When the lock is deleted from Consul under a running command, the command
// gets SIGTERM at once and SIGKILL after -grace, and exec exits 76.
func TestExecStopsCommandWhenLockIsLost(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	for _, tc := range []struct {
		name, script string
		within       time.Duration
	}{
		{"command that stops on SIGTERM", "sleep 60", time.Second},
		{"command that ignores SIGTERM", `trap "" TERM; sleep 60`, time.Second + 2*time.Second},
	} {
		key := lockKey(t) + "-" + strconv.Itoa(len(tc.script))
		cmd, pid := startExec(t, tc.script, "-grace", "1s", key)
		deleted := time.Now()
		if _, err := c.KV().Delete("locks/ephemeral/"+key, nil); err != nil {
			t.Fatal(err)
		}
		code := cmd.wait(t, tc.within+5*time.Second)
		took := time.Since(deleted)
		if code != exitLost || took > tc.within {
			t.Fatalf("%s: exec exited %d %v after the key was deleted, want %d within %v (stderr: %s)", tc.name, code, took, exitLost, tc.within, cmd.errOut)
		}
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Fatalf("%s: command (pid %d) still alive after exec exited", tc.name, pid)
		}
		t.Logf("%s: stopped %v after its lock was deleted", tc.name, took.Round(time.Millisecond))
		assertGone(t, c, key)
	}
}

// SIGINT to consul-lock while it waits for the lock, or while the command
// runs, leaves no session and no key behind.
func TestExecSIGINTLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)

	cmd, pid := startExec(t, "sleep 60", key)
	waiter := cliCommand(t, "exec", key, "--", "true")
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 5*time.Second, "the waiter's session exists", func() bool {
		return countSessions(t, c, "locks/ephemeral/"+key) == 2
	})
	waiter.Process.Signal(syscall.SIGINT)
	waiter.Wait()
	if code := waiter.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("waiter interrupted by SIGINT exited %d, want 130", code)
	}
	if n := countSessions(t, c, "locks/ephemeral/"+key); n != 1 {
		t.Fatalf("%d sessions after the waiter was interrupted, want only the holder's", n)
	}

	cmd.cmd.Process.Signal(syscall.SIGINT)
	if code := cmd.wait(t, 5*time.Second); code != 130 {
		t.Fatalf("exec whose command got SIGINT exited %d, want 130 (stderr: %s)", code, cmd.errOut)
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Fatalf("command (pid %d) still alive after SIGINT", pid)
	}
	assertGone(t, c, key)
}

// -max-hold stops the command and releases the lock when it runs out, and
// exec exits 124, as timeout(1) does.
func TestExecMaxHold(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	cmd, pid := startExec(t, "sleep 60", "-max-hold", "500ms", "-grace", "1s", key)
	start := time.Now()
	code := cmd.wait(t, 10*time.Second)
	if code != exitMaxHold || time.Since(start) > 3*time.Second {
		t.Fatalf("exec -max-hold 500ms exited %d after %v, want %d soon after 500ms (stderr: %s)", code, time.Since(start), exitMaxHold, cmd.errOut)
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Fatalf("command (pid %d) still alive after -max-hold ran out", pid)
	}
	assertGone(t, c, key)
}

// exec -v reports the wait, the fencing token and the hold time, for a lock
// and for a semaphore's slot.
func TestExecVerbose(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"1", "2"} {
		r := cli(t, "exec", "-v", "-n", n, lockKey(t), "--", "sh", "-c", "sleep 0.05")
		if r.code != 0 {
			t.Fatalf("-n %s: exit %d: %s", n, r.code, r.errOut)
		}
		for _, re := range []string{`acquired locks/ephemeral/\S+, fencing token [1-9][0-9]*, after waiting \S+`, `released locks/ephemeral/\S+ \(token [1-9][0-9]*\) after holding it [0-9.]+m?s`} {
			if !regexp.MustCompile(re).MatchString(r.errOut) {
				t.Errorf("-n %s: stderr lacks %s:\n%s", n, re, r.errOut)
			}
		}
	}
}

// exec -n 2 lets at most two commands run at once, and two do.
func TestExecSemaphore(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	logPath := filepath.Join(t.TempDir(), "sections.log")
	section := `echo "start $$" >> "$1"; sleep 0.1; echo "end $$" >> "$1"`
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 3 {
				if r := cli(t, "exec", "-n", "2", "-timeout", "1m", key, "--", "sh", "-c", section, "sh", logPath); r.code != 0 {
					t.Errorf("exec -n 2 exited %d: %s", r.code, r.errOut)
				}
			}
		})
	}
	wg.Wait()
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	running, most := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(line, "start") {
			running++
		} else {
			running--
		}
		most = max(most, running)
	}
	if most != 2 {
		t.Fatalf("at most %d commands at once under exec -n 2, want 2", most)
	}
	if keys, _, _ := c.KV().Keys("locks/ephemeral/"+key, "", nil); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// When the client agent that exec talks through dies, the lock is lost at
// its local deadline: the command is told to stop before a rival through
// another client agent can take the lock, and exec exits 76 within seconds
// of the command stopping, not after trying to release through the dead
// agent.
func TestExecExitsSoonAfterItsAgentDies(t *testing.T) {
	t.Parallel()
	cluster := consultest.Topology(t, consulagent.Topology{Servers: 1, Clients: 2})
	c1, c2 := cluster.Clients[0], cluster.Clients[1]
	key := lockKey(t)
	stopFile := filepath.Join(t.TempDir(), "stopping")
	script := `trap 'touch "` + stopFile + `"; exit 143' TERM; sleep 60 & wait`
	cmd, pid := startExec(t, script, "-http-addr", c1.HTTPAddr(), "-ttl", "10s", key)
	rival, err := consullock.NewEphemeralLock(key, consullock.WithClient(consultest.ClientOf(t, c2)), consullock.WithAcquireTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := c1.Kill(); err != nil {
		t.Fatal(err)
	}
	rivalTook := make(chan time.Time, 1)
	go func() {
		if rival.Acquire(context.Background()) == nil {
			rivalTook <- time.Now()
		}
	}()
	defer rival.Release(context.Background())

	told, gone := when(func() bool { return exists(stopFile) }), when(func() bool { return !alive(pid) })
	code := cmd.wait(t, 30*time.Second)
	exited := time.Now()
	stopped := <-gone
	since := func(at time.Time) time.Duration { return at.Sub(killed).Round(time.Millisecond) }
	var toldAt time.Time
	select {
	case toldAt = <-told:
		t.Logf("after c1 was killed: command told to stop at +%v, gone at +%v, consul-lock exited at +%v (%v after its command)",
			since(toldAt), since(stopped), since(exited), exited.Sub(stopped).Round(time.Millisecond))
	default:
		t.Fatalf("consul-lock exited %d; the command was never told to stop (stderr: %s)", code, cmd.errOut)
	}
	select {
	case took := <-rivalTook:
		if !took.After(toldAt) {
			t.Fatalf("a rival took the lock at +%v, before the command was told to stop at +%v", since(took), since(toldAt))
		}
	default: // no rival has the lock yet: the command stopped first
	}
	if code != exitLost || exited.Sub(stopped) > 3*time.Second {
		t.Fatalf("consul-lock exited %d %v after its command stopped, want %d within 3s (stderr: %s)", code, exited.Sub(stopped), exitLost, cmd.errOut)
	}
	assertNoProcessGroup(t, pid)
}

// When the client agent dies while the command runs and the command then
// exits on its own, before the lock is known lost, exec exits with the
// command's status within a few seconds, holding a lock or a semaphore's
// slot: the release through the dead agent is bounded.
func TestExecReleaseThroughADeadAgentIsBounded(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"1", "2"} {
		t.Run("-n "+n, func(t *testing.T) {
			t.Parallel()
			cluster := consultest.Topology(t, consulagent.Topology{Servers: 1, Clients: 1})
			c1 := cluster.Clients[0]
			doneFile := filepath.Join(t.TempDir(), "done")
			script := `while [ ! -e "` + doneFile + `" ]; do sleep 0.02; done; exit 3`
			cmd, pid := startExec(t, script, "-http-addr", c1.HTTPAddr(), "-ttl", "10s", "-n", n, lockKey(t))
			if err := c1.Kill(); err != nil {
				t.Fatal(err)
			}
			gone := when(func() bool { return !alive(pid) })
			if err := os.WriteFile(doneFile, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			code := cmd.wait(t, 30*time.Second)
			exited := time.Now()
			stopped := <-gone
			t.Logf("consul-lock exited %v after its command, whose agent was dead", exited.Sub(stopped).Round(time.Millisecond))
			if code != 3 || exited.Sub(stopped) > 3*time.Second {
				t.Fatalf("consul-lock exited %d %v after its command, want the command's 3 within 3s (stderr: %s)", code, exited.Sub(stopped), cmd.errOut)
			}
			if !strings.Contains(cmd.errOut.String(), "could not release the lock") {
				t.Errorf("consul-lock did not say that it could not release the lock; stderr: %s", cmd.errOut)
			}
			assertNoProcessGroup(t, pid)
		})
	}
}

// when polls cond every 5 ms from now on, and sends the time it first held.
func when(cond func() bool) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		for !cond() {
			time.Sleep(5 * time.Millisecond)
		}
		ch <- time.Now()
	}()
	return ch
}

// exists reports whether a file is at path.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// alive reports whether process pid exists (consul-lock reaps its command
// as soon as it exits).
func alive(pid int) bool { return syscall.Kill(pid, 0) != syscall.ESRCH }

// assertNoProcessGroup checks that nothing is left of the command's process
// group, whose leader was pid.
func assertNoProcessGroup(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(-pid, 0); err != syscall.ESRCH {
		t.Fatalf("a process of the command's group (pgid %d) is still alive after consul-lock exited: %v", pid, err)
	}
}
