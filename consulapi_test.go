package consullock_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consulagent"
	"github.com/consullock/consullock/internal/consultest"
)

// apiLock is consul/api's own Lock on key, with a session name of the
// test's, so that the test can wait for its session to be gone.
func apiLock(t *testing.T, c *api.Client, key string, tryOnce bool) *api.Lock {
	t.Helper()
	l, err := c.LockOpts(&api.LockOptions{Key: key, SessionName: "api.Lock " + t.Name(),
		LockTryOnce: tryOnce, LockWaitTime: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// assertSessionsGone waits until api.Lock has destroyed its sessions, which
// it does in the background after Unlock.
func assertSessionsGone(t *testing.T, c *api.Client, name string) {
	t.Helper()
	consultest.Eventually(t, 5*time.Second, "no session named "+name, func() bool {
		all, _, err := c.Session().List(nil)
		if err != nil {
			return false
		}
		for _, s := range all {
			if s.Name == name {
				return false
			}
		}
		return true
	})
}

// contended is an Observer that tells when an acquire waits for a holder.
type contended struct {
	consullock.NopObserver
	ch chan string
}

func (o contended) Contended(e consullock.ContendEvent) {
	select {
	case o.ch <- e.Holder:
	default:
	}
}

// WithConsulAPILayout puts the lock on NAME/.lock marked with
// api.LockFlagValue (or on the WithKeyPattern key), and Semaphore refuses
// it; without the option, consul/api's Lock fails on our held key with
// ErrLockConflict, which is what the option is for.
func TestConsulAPILayoutKeys(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	name := lockName(t, "job")
	l := mustAcquire(t, c, name, consullock.WithConsulAPILayout())
	pair, _, err := c.KV().Get(name+"/.lock", nil)
	if err != nil || pair == nil || pair.Session != l.Session() || pair.Flags != api.LockFlagValue || l.Key() != name+"/.lock" {
		t.Fatalf("key %s = %+v (%v), want held by %s with flags %#x", l.Key(), pair, err, l.Session(), uint64(api.LockFlagValue))
	}
	if own := newLock(t, c, "mine/leader", consullock.WithConsulAPILayout(), consullock.WithKeyPattern("%s")); own.Key() != "mine/leader" {
		t.Errorf("WithKeyPattern(%%s) with WithConsulAPILayout gives key %q, want mine/leader", own.Key())
	}

	plain := mustAcquire(t, c, lockName(t, "plain"))
	if _, err := apiLock(t, c, plain.Key(), true).Lock(nil); !errors.Is(err, api.ErrLockConflict) {
		t.Errorf("api.Lock on a key held without the option: %v, want api.ErrLockConflict", err)
	}

	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithConsulAPILayout())
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(context.Background())
	if _, err := lk.Semaphore("encoders", 3); !errors.Is(err, consullock.ErrInvalidOption) {
		t.Errorf("Semaphore on a Locker WithConsulAPILayout: %v, want ErrInvalidOption", err)
	}
	e, err := consullock.NewElection(lockName(t, "leader"), consullock.WithClient(c), consullock.WithConsulAPILayout())
	if err != nil {
		t.Fatal(err)
	}
	term, err := e.Campaign(context.Background(), []byte("me"))
	if err != nil {
		t.Fatal(err)
	}
	defer term.Resign(context.Background())
	if pair, _, err := c.KV().Get(lockName(t, "leader")+"/.lock", nil); err != nil || pair == nil || pair.Flags != api.LockFlagValue || string(pair.Value) != "me" {
		t.Errorf("an election's key WithConsulAPILayout = %+v (%v), want NAME/.lock with consul/api's flags", pair, err)
	}
	assertSessionsGone(t, c, "api.Lock "+t.Name())
}

// Our holder makes consul/api's Lock wait (not fail with ErrLockConflict),
// and the api.Lock waiter gets the lock once ours is released.
func TestConsulAPILockWaitsForOurs(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ours := mustAcquire(t, c, lockName(t, "job"), consullock.WithConsulAPILayout())

	leaderCh, err := apiLock(t, c, ours.Key(), true).Lock(nil)
	if err != nil || leaderCh != nil {
		t.Fatalf("a one-shot api.Lock while ours holds: %v, %v; want it to wait 300ms and give up without an error", leaderCh, err)
	}

	theirs := apiLock(t, c, ours.Key(), false)
	got := make(chan error, 1)
	go func() {
		_, err := theirs.Lock(nil)
		got <- err
	}()
	if err := ours.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("api.Lock after our release: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("api.Lock did not get the lock within 10s of our release")
	}
	if err := theirs.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := theirs.Destroy(); err != nil {
		t.Fatal(err)
	}
	assertSessionsGone(t, c, "api.Lock "+t.Name())
}

// consul/api's Lock as the holder makes a Locker's acquire wait (not
// fail), and the Locker gets the key, still marked with consul/api's flags,
// once api.Lock unlocks.
func TestOurLockerWaitsForConsulAPILock(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "job")
	theirs := apiLock(t, c, name+"/.lock", false)
	if _, err := theirs.Lock(nil); err != nil {
		t.Fatal(err)
	}
	waits := contended{ch: make(chan string, 1)}
	lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithConsulAPILayout(),
		consullock.WithAcquireTimeout(30*time.Second), consullock.WithObserver(waits))
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close(ctx)
	got := make(chan *consullock.Lease, 1)
	go func() {
		lease, err := lk.Acquire(ctx, name)
		if err != nil {
			t.Error(err)
		}
		got <- lease
	}()
	select {
	case <-waits.ch:
	case lease := <-got:
		t.Fatalf("our acquire returned %v while api.Lock held the key; want it to wait", lease)
	}
	if err := theirs.Unlock(); err != nil {
		t.Fatal(err)
	}
	lease := <-got
	if lease == nil {
		t.FailNow()
	}
	pair, _, err := c.KV().Get(name+"/.lock", nil)
	if err != nil || pair == nil || pair.Session != lease.Session() || pair.Flags != api.LockFlagValue {
		t.Fatalf("after api.Lock's Unlock, the key is %+v (%v); want ours, flags %#x", pair, err, uint64(api.LockFlagValue))
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	assertSessionsGone(t, c, "api.Lock "+t.Name())
}

// `consul lock PREFIX` (the pinned Consul's own command) and a lock
// WithConsulAPILayout on name PREFIX wait for each other, both ways.
func TestConsulLockCommandInterop(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	bin, err := consulagent.Binary(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	name := lockName(t, "job")
	consulLock := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"lock", "-http-addr=" + consultest.Shared(t).HTTPAddr()}, args...)...)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN=")
		return cmd
	}

	ours := mustAcquire(t, c, name, consullock.WithConsulAPILayout())
	out, err := consulLock("-try=300ms", name, "true").CombinedOutput()
	if err == nil || strings.Contains(string(out), "does not match") {
		t.Fatalf("consul lock -try while ours holds: %v\n%s\nwant it to time out, not to conflict", err, out)
	}
	// consul lock exits before its background destroy of the session it
	// made in vain is sent; destroy it for it.
	consultest.DestroyConsulLockSessions(t, c, name)
	if err := ours.Release(ctx); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	held, stop := filepath.Join(dir, "held"), filepath.Join(dir, "stop")
	cmd := consulLock(name, "touch "+held+"; while [ ! -e "+stop+" ]; do sleep 0.05; done")
	var cmdOut strings.Builder
	cmd.Stdout, cmd.Stderr = &cmdOut, &cmdOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	consultest.Eventually(t, 10*time.Second, "consul lock runs its command", func() bool {
		_, err := os.Stat(held)
		return err == nil
	})
	if ok, err := newLock(t, c, name, consullock.WithConsulAPILayout()).TryAcquire(ctx); ok || err != nil {
		t.Fatalf("TryAcquire while consul lock holds: %v, %v; want false, nil", ok, err)
	}
	waiter := newLock(t, c, name, consullock.WithConsulAPILayout(), consullock.WithAcquireTimeout(30*time.Second))
	releaseAtEnd(t, waiter)
	os.WriteFile(stop, nil, 0o644)
	if err := waiter.Acquire(ctx); err != nil {
		t.Fatalf("Acquire after consul lock's command ended: %v\nconsul lock said:\n%s", err, cmdOut.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("consul lock: %v\n%s", err, cmdOut.String())
	}
	consultest.DestroyConsulLockSessions(t, c, name)
}
