package consullock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// recorder is an Observer that keeps the events it sees, in order.
type recorder struct {
	mu     sync.Mutex
	events []any
}

func (r *recorder) add(e any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) Acquired(e consullock.AcquireEvent)  { r.add(e) }
func (r *recorder) Contended(e consullock.ContendEvent) { r.add(e) }
func (r *recorder) Released(e consullock.ReleaseEvent)  { r.add(e) }
func (r *recorder) RenewFailed(e consullock.RenewEvent) { r.add(e) }
func (r *recorder) Lost(e consullock.LostEvent)         { r.add(e) }

// kinds lists the events' types in order, such as "Contend Acquire Release".
func (r *recorder) kinds() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%T", e), "consullock."), "Event"))
	}
	return strings.Join(out, " ")
}

func (r *recorder) count(kind string) int { return strings.Count(r.kinds(), kind) }

// The hooks see contention, the acquire that follows it with its wait and
// attempts, and the release, in that order.
func TestObserverSeesEventsInOrder(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	name := lockName(t, "k")
	var first, second recorder
	a := mustAcquire(t, c, name, consullock.WithObserver(&first))
	holderSession := a.Session()
	b := newLock(t, c, name, consullock.WithObserver(&second), consullock.WithAcquireTimeout(10*time.Second))
	releaseAtEnd(t, b)
	errc := make(chan error, 1)
	go func() { errc <- b.Acquire(ctx) }()
	consultest.Eventually(t, 5*time.Second, "the waiter reports contention", func() bool { return second.count("Contend") == 1 })
	time.Sleep(50 * time.Millisecond) // the holder holds a little longer
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := first.kinds(); got != "Acquire Release" {
		t.Fatalf("holder's events: %s", got)
	}
	if got := second.kinds(); got != "Contend Acquire Release" {
		t.Fatalf("waiter's events: %s, want Contend Acquire Release", got)
	}
	contend := second.events[0].(consullock.ContendEvent)
	acq := second.events[1].(consullock.AcquireEvent)
	rel := first.events[1].(consullock.ReleaseEvent)
	if contend.Holder != holderSession || acq.Err != nil || acq.Token <= rel.Token || acq.Attempts < 2 || acq.Wait < 50*time.Millisecond || rel.Held < 50*time.Millisecond {
		t.Fatalf("contend %+v, acquire %+v, holder's release %+v", contend, acq, rel)
	}

	mustAcquire(t, c, name)
	var timedOut recorder
	ok, err := newLock(t, c, name, consullock.WithObserver(&timedOut)).TryAcquire(ctx)
	if ok || err != nil {
		t.Fatal(ok, err)
	}
	if e, _ := timedOut.events[len(timedOut.events)-1].(consullock.AcquireEvent); !errors.Is(e.Err, consullock.ErrNotAcquired) {
		t.Fatalf("a timed-out acquire reported %+v, want ErrNotAcquired", e)
	}
}

// A Locker's lease lost by its session's destruction is reported as lost.
func TestObserverSeesLoss(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	var rec recorder
	lk := newLocker(t, c, consullock.WithObserver(&rec))
	l, err := lk.Acquire(context.Background(), lockName(t, "k"))
	if err != nil {
		t.Fatal(err)
	}
	l.Lost() // watch the key
	if _, err := c.Session().Destroy(l.Session(), nil); err != nil {
		t.Fatal(err)
	}
	consultest.Eventually(t, 2*time.Second, "the loss is reported", func() bool { return rec.count("Lost") == 1 })
	if got := rec.kinds(); got != "Acquire Lost" {
		t.Fatalf("events %s, want Acquire Lost", got)
	}
	if e := rec.events[1].(consullock.LostEvent); !errors.Is(e.Cause, consullock.ErrLockLost) || e.Token != l.Token() {
		t.Fatalf("lost event %+v", e)
	}
}

// Renewals that fail on the way are reported, and retried until one gets
// through, so the lock is not lost.
func TestObserverSeesRenewalErrors(t *testing.T) {
	t.Parallel()
	var rec recorder
	c, proxy := proxiedClient(t, consultest.Shared(t).HTTPAddr())
	l := mustAcquire(t, c, lockName(t, "k"), consullock.WithRenewal(),
		consullock.WithLockTimeout(consullock.MinLockTimeout), consullock.WithObserver(&rec))
	proxy.SetFaults(1, faultproxy.Status500)
	consultest.Eventually(t, 15*time.Second, "a failed renewal is reported", func() bool { return rec.count("Renew") > 0 })
	proxy.SetFaults(0)
	select {
	case <-l.Lost():
		t.Fatalf("lock lost although a renewal got through in time: %v", l.Err())
	case <-time.After(consullock.MinLockTimeout):
	}
	if got := rec.kinds(); !regexp.MustCompile(`^Acquire( Renew)+$`).MatchString(got) {
		t.Fatalf("events %s, want the acquire, then failed renewals only", got)
	}
	t.Logf("events: %s", rec.kinds())
}

// A Semaphore and AcquireAll report to the Observer as Acquire does: a
// waiter's contention, then its acquire with its token; one acquire event
// per key taken together.
func TestObserverSeesSemaphoreAndAcquireAll(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	var holderRec, waiterRec recorder
	name := lockName(t, "sem")
	holder := newLocker(t, c, consullock.WithObserver(&holderRec))
	waiter := newLocker(t, c, consullock.WithObserver(&waiterRec), consullock.WithAcquireTimeout(10*time.Second))
	semOf := func(lk *consullock.Locker) *consullock.Semaphore {
		sem, err := lk.Semaphore(name, 1)
		if err != nil {
			t.Fatal(err)
		}
		return sem
	}
	held, err := semOf(holder).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *consullock.Lease, 1)
	go func() {
		l, err := semOf(waiter).Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	consultest.Eventually(t, 5*time.Second, "the semaphore's waiter reports contention", func() bool { return waiterRec.count("Contend") == 1 })
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l := <-got
	if l == nil {
		t.FailNow()
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if k := holderRec.kinds(); k != "Acquire Release" {
		t.Fatalf("semaphore holder's events: %s", k)
	}
	if k := waiterRec.kinds(); k != "Contend Acquire Release" {
		t.Fatalf("semaphore waiter's events: %s, want Contend Acquire Release", k)
	}
	contend, acq := waiterRec.events[0].(consullock.ContendEvent), waiterRec.events[1].(consullock.AcquireEvent)
	if contend.Holder != held.Session() || acq.Err != nil || acq.Token != l.Token() || acq.Attempts < 1 {
		t.Fatalf("semaphore waiter: contend %+v, acquire %+v (lease token %d)", contend, acq, l.Token())
	}

	var allRec recorder
	lk := newLocker(t, c, consullock.WithObserver(&allRec))
	leases, err := lk.AcquireAll(ctx, lockName(t, "a"), lockName(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range leases {
		e, ok := allRec.events[i].(consullock.AcquireEvent)
		if !ok || e.Key != l.Key() || e.Token != l.Token() || e.Attempts != 1 || e.Err != nil {
			t.Fatalf("AcquireAll event %d: %+v, want the acquire of %s with token %d", i, allRec.events[i], l.Key(), l.Token())
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// The slog adapter logs every kind of event, and never an ACL token or a
// lock's value.
func TestSlogObserverKeepsSecrets(t *testing.T) {
	t.Parallel()
	c := consultest.Client(t)
	ctx := context.Background()
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const token, value = "3f1c9a2e-secret-token", "super-secret-value"
	opts := []consullock.Option{consullock.WithObserver(consullock.SlogObserver(logger)), consullock.WithToken(token),
		consullock.WithValue(func() []byte { return []byte(value) })}
	name := lockName(t, "k")
	holder := mustAcquire(t, c, name, opts...)
	busy := newLock(t, c, name, append(opts, consullock.WithAcquireTimeout(200*time.Millisecond))...)
	if ok, err := busy.TryAcquire(ctx); ok || err != nil {
		t.Fatal(ok, err)
	}
	holder.Lost()
	if _, err := c.Session().Destroy(holder.Session(), nil); err != nil {
		t.Fatal(err)
	}
	<-holder.Lost()
	holder.Release(ctx)
	next := mustAcquire(t, c, name, opts...)
	next.Release(ctx)

	mu.Lock()
	out := buf.String()
	mu.Unlock()
	for _, want := range []string{"lock acquired", "lock held by another session", "lock not acquired in time", "lock lost", "lock released"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, token) || strings.Contains(out, value) {
		t.Fatalf("a secret reached the log:\n%s", out)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// BenchmarkObserver is a Locker cycle with no Observer, a NopObserver and a
// slog adapter that discards: a nil Observer adds no allocation.
func BenchmarkObserver(b *testing.B) {
	c := consultest.Client(b)
	for _, tc := range []struct {
		name string
		o    consullock.Observer
	}{
		{"nil", nil},
		{"nop", consullock.NopObserver{}},
		{"slog-discard", consullock.SlogObserver(slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug})))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			lk, err := consullock.NewLocker(consullock.WithClient(c), consullock.WithObserver(tc.o))
			if err != nil {
				b.Fatal(err)
			}
			defer lk.Close(context.Background())
			b.ReportAllocs()
			for b.Loop() {
				l, err := lk.Acquire(context.Background(), "bench-observer")
				if err != nil {
					b.Fatal(err)
				}
				l.Release(context.Background())
			}
		})
	}
}
