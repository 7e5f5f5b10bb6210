package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
)

// waiter enqueues a contender key for full as the library's waiters do:
// KEY.queue/<session>-<nonce>, held by a session of its own, valued with the
// waiter's holder record (or nothing, as older waiters wrote). It returns
// the contender key and its session; cleanup destroys the session, which
// deletes the key.
func waiter(t *testing.T, c *api.Client, full string, value []byte) (string, string) {
	t.Helper()
	// A lock delay of its own (Consul's default is 15 s) would keep the key
	// from the next test once a release hands it to this waiter.
	id, _, err := c.Session().Create(&api.SessionEntry{TTL: "30s", Behavior: api.SessionBehaviorDelete, Checks: []string{}, LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Session().Destroy(id, nil) })
	key := full + ".queue/" + id + "-0001"
	if ok, _, err := c.KV().Acquire(&api.KVPair{Key: key, Value: value, Session: id}, nil); err != nil || !ok {
		t.Fatalf("enqueue %s: %v %v", key, ok, err)
	}
	return key, id
}

func holderJSON(host string, pid int, at string) []byte {
	b, _ := json.Marshal(consullock.Holder{LockedAt: at, Host: host, PID: pid})
	return b
}

// status shows the holder and then the waiters in the order of their
// contender keys' creation, with host, pid, session and waiting since; a
// contender key with no session (its waiter died) is not in the queue, and
// an empty value is shown, not an error. list counts the waiters and never
// shows a contender key as a lock.
func TestStatusShowsTheQueueInOrder(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	full := "locks/ephemeral/" + key
	holder, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer holder.Release(context.Background())

	_, first := waiter(t, c, full, holderJSON("web-2", 977, "2025-01-02 03:04:05.000000"))
	dead := full + ".queue/gone-0002"
	if _, err := c.KV().Put(&api.KVPair{Key: dead}, nil); err != nil {
		t.Fatal(err)
	}
	defer c.KV().Delete(dead, nil)
	_, second := waiter(t, c, full, nil)

	r := cli(t, "status", key)
	want := fmt.Sprintf("  queue:   2 waiting\n    1. web-2 pid 977, session %s, waiting since 2025-01-02 03:04:05.000000\n    2. (no value), session %s, waiting since -\n", first, second)
	if r.code != 0 || !strings.Contains(r.out, "holder:  ") || !strings.HasSuffix(r.out, want) {
		t.Fatalf("status: exit %d\n%s\nwant it to end with\n%s", r.code, r.out, want)
	}

	var info lockInfo
	r = cli(t, "status", "-json", key)
	if err := json.Unmarshal([]byte(r.out), &info); err != nil {
		t.Fatalf("status -json %q: %v", r.out, err)
	}
	if info.Waiting != 2 || info.Queue[0].Session != first || info.Queue[0].PID != 977 || info.Queue[0].WaitingSince == "" || info.Queue[1].Session != second {
		t.Fatalf("status -json queue = %+v, want %s (pid 977) then %s", info.Queue, first, second)
	}

	var infos []lockInfo
	r = cli(t, "list", "-json", key)
	if err := json.Unmarshal([]byte(r.out), &infos); err != nil || len(infos) != 1 || infos[0].Key != full || infos[0].Waiting != 2 {
		t.Fatalf("list -json %s = %q (%v), want the one lock with 2 waiting", key, r.out, err)
	}
	if r := cli(t, "list", key); strings.Contains(r.out, ".queue/") || !strings.Contains(r.out, "WAITING") {
		t.Fatalf("list shows a contender key or no WAITING column:\n%s", r.out)
	}
}

// A fair Locker's real waiter is in the queue that status shows.
func TestStatusShowsAFairWaiter(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	ctx := context.Background()
	holder, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithFairQueueing(), consullock.WithAcquireTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	got := make(chan error, 1)
	go func() {
		lease, err := lk.Acquire(ctx, key)
		if err == nil {
			err = lease.Release(ctx)
		}
		got <- err
	}()
	consultest.Eventually(t, 10*time.Second, "status shows the fair waiter", func() bool {
		var info lockInfo
		r := cli(t, "status", "-json", key)
		return json.Unmarshal([]byte(r.out), &info) == nil && info.Waiting == 1 && info.Queue[0].Session != holder.Session()
	})
	holder.Release(ctx)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	lk.Close(ctx)
	assertGone(t, c, key)
}

// A semaphore shows as "N of LIMIT held" with its holders; list shows it
// as one row, never its slot keys.
func TestStatusAndListShowASemaphore(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	full := "locks/ephemeral/" + key
	ctx := context.Background()
	lk, err := consullock.NewLocker(consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	sem, err := lk.Semaphore(key, 3)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		lease, err := sem.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer lease.Release(ctx)
	}

	r := cli(t, "status", key)
	if r.code != 0 || !strings.HasPrefix(r.out, full+": 2 of 3 held\n") || strings.Count(r.out, "pid "+fmt.Sprint(os.Getpid())) != 2 {
		t.Fatalf("status of a semaphore: exit %d\n%s", r.code, r.out)
	}
	var infos []lockInfo
	r = cli(t, "list", "-json", key)
	if err := json.Unmarshal([]byte(r.out), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("list -json = %q (%v), want one semaphore", r.out, err)
	}
	if i := infos[0]; i.Key != full || i.Kind != kindSemaphore || i.Limit != 3 || len(i.Holders) != 2 || !i.Held {
		t.Fatalf("list -json = %+v, want %s, a semaphore, 2 of 3 held", i, full)
	}
	if r := cli(t, "list", key); strings.Contains(r.out, "/slot-") || !strings.Contains(r.out, "2 of 3 held") {
		t.Fatalf("list shows slot keys, or not the semaphore:\n%s", r.out)
	}
	if r := cli(t, "release", "-yes", key); r.code != 1 || !strings.Contains(r.errOut, "is a semaphore") {
		t.Fatalf("release of a semaphore: exit %d, %q", r.code, r.errOut)
	}
}

// status -watch prints the state, then each change of holder and queue as
// it happens, one JSON object a line, and stops cleanly on Ctrl-C.
func TestStatusWatchPrintsEachChange(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	key := lockKey(t)
	full := "locks/ephemeral/" + key
	cmd := cliCommand(t, "status", "-watch", "-json", key)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	proc := &osCmd{cmd: cmd, errOut: &strings.Builder{}}
	lines := make(chan lockInfo, 16)
	go readStates(out, lines)
	next := func(what string, ok func(lockInfo) bool) {
		t.Helper()
		select {
		case info := <-lines:
			if !ok(info) {
				t.Fatalf("status -watch printed %+v, want %s", info, what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("status -watch printed nothing in 10s; want %s", what)
		}
	}
	next("free", func(i lockInfo) bool { return !i.Held && i.At != "" })

	ctx := context.Background()
	holder, err := consullock.NewEphemeralLock(key, consullock.WithClient(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	next("held by "+holder.Session(), func(i lockInfo) bool { return i.Held && i.Session == holder.Session() && i.Waiting == 0 })
	_, w := waiter(t, c, full, holderJSON("web-3", 1203, "2025-01-02 03:04:05.000000"))
	next("one waiter", func(i lockInfo) bool { return i.Held && i.Waiting == 1 && i.Queue[0].Session == w })
	holder.Release(ctx)
	// The release hands the key to the waiter in line when the holder's
	// process has seen it there, and frees it otherwise.
	next("handed to the waiter, or free with one waiter", func(i lockInfo) bool {
		return i.Held && i.Session == w && i.Waiting == 0 || !i.Held && i.Waiting == 1
	})
	c.Session().Destroy(w, nil)
	next("free", func(i lockInfo) bool { return !i.Held && i.Waiting == 0 })

	cmd.Process.Signal(syscall.SIGINT)
	if code := proc.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("status -watch exited %d after Ctrl-C", code)
	}
	assertGone(t, c, key)
}

func readStates(r io.Reader, lines chan<- lockInfo) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var info lockInfo
		if json.Unmarshal(sc.Bytes(), &info) == nil {
			lines <- info
		}
	}
}
