package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/consullock/consullock"
)

const execUsage = `Usage: consul-lock exec [flags] KEY -- COMMAND [ARG...]

Waits for the lock KEY (Consul key locks/ephemeral/KEY), runs COMMAND while
holding it, renewing the lock's session, and releases it when COMMAND exits.
With -n N, up to N commands run at once (a semaphore of N slots).
Exits with COMMAND's status, 128+N when it died of signal N.

COMMAND gets CONSUL_LOCK_KEY, CONSUL_LOCK_SESSION and CONSUL_LOCK_TOKEN (the
fencing token) in its environment and inherits stdin, stdout and stderr.
SIGINT and SIGTERM are passed on to it. If the lock is lost while it runs,
its process group gets SIGTERM at once and SIGKILL after -grace.

Once COMMAND has stopped, the lock is given back within 2s; an agent that
does not answer by then (dead, cut off) is not waited for, and Consul frees
the lock when its session's TTL (-ttl) runs out. After a loss there is
nothing left to give back: consul-lock exits at most 1s after COMMAND.

Exit statuses besides COMMAND's:
  64   usage error: flags, KEY, or client settings (an unreadable token file)
  69   Consul unreachable or refusing (ACL, TLS)
  75   lock not acquired within -timeout (see -conflict-exit-code)
  76   lock lost while COMMAND ran; COMMAND was stopped
  124  -max-hold ran out; COMMAND was stopped
  127  COMMAND could not be started

With -consul-api, the lock is the one that ` + "`consul lock KEY`" + ` and consul/api's Lock
take (Consul key KEY/.lock, with their flags), so that scripts and services
not yet moved to consul-lock wait for it, and it for them.

Examples:
  consul-lock exec nightly-report -- ./report.sh
  consul-lock exec -try -conflict-exit-code 0 backup -- pg_dump mydb
  consul-lock exec -timeout 30s -max-hold 1h migrate -- ./migrate up
  consul-lock exec -n 3 encoders -- ./encode.sh
  consul-lock exec -consul-api service/billing/lock -- ./bill.sh

Flags:
`

type execFlags struct {
	*keyFlags
	timeout   time.Duration
	try       bool
	ttl       time.Duration
	maxHold   time.Duration
	lockDelay time.Duration
	grace     time.Duration
	conflict  int
	verbose   bool
	n         int
	consulAPI bool
}

func runExec(ctx context.Context, args []string, s stdio) error {
	var f execFlags
	fs, k := newKeyFlagSet("consul-lock exec", execUsage, s)
	f.keyFlags = k
	fs.DurationVar(&f.timeout, "timeout", 0, "how long to wait for the lock; 0 waits forever")
	fs.BoolVar(&f.try, "try", false, "one attempt: do not wait if the lock is held")
	fs.DurationVar(&f.ttl, "ttl", 15*time.Second, "session TTL: how soon the lock of a dead consul-lock is freed (10s to 24h)")
	fs.DurationVar(&f.maxHold, "max-hold", 0, "stop COMMAND and release the lock after this long; 0 for no limit")
	fs.DurationVar(&f.lockDelay, "lock-delay", 0, "how long Consul keeps the key from others after this holder's session is invalidated (0 to 60s)")
	fs.DurationVar(&f.grace, "grace", 5*time.Second, "time between SIGTERM and SIGKILL when COMMAND must stop")
	fs.IntVar(&f.conflict, "conflict-exit-code", exitConflict, "exit status when the lock is not acquired in time")
	fs.BoolVar(&f.verbose, "v", false, "print the wait, the hold time and the fencing token to stderr")
	fs.IntVar(&f.n, "n", 1, "let up to `N` holders run at once (a semaphore of N slots; at most 24h each)")
	fs.BoolVar(&f.consulAPI, "consul-api", false, "lock KEY/.lock as `consul lock KEY` and consul/api's Lock do (their flags), so both wait for each other; not with -n")
	if err := parseFlags(fs, args, s, 2, -1); err != nil {
		return err
	}
	name, argv := fs.Arg(0), fs.Args()[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return usageError{errors.New("no COMMAND to run after KEY --")}
	}
	if err := f.validate(); err != nil {
		return err
	}
	// Everything is built, and so validated, before the agent is asked
	// anything: a usage error exits 64 whether or not Consul answers.
	client, cfg, err := f.conn.newClient()
	if err != nil {
		return err
	}
	var observer consullock.Observer
	if f.verbose {
		observer = verbose{s.errOut}
	}
	pattern := f.pattern
	if f.consulAPI && !flagGiven(fs, "key-pattern") {
		pattern = "%s/.lock" // the key of `consul lock KEY`
	}
	opts := []consullock.Option{
		consullock.WithObserver(observer),
		consullock.WithClient(client),
		consullock.WithKeyPattern(pattern),
		consullock.WithLockDelay(f.lockDelay),
		consullock.WithAcquireTimeout(f.acquireTimeout()),
	}
	if f.consulAPI {
		opts = append(opts, consullock.WithConsulAPILayout())
	}
	take, done, err := newTaker(name, opts, f)
	if err != nil {
		return usageError{err}
	}
	defer within(releaseTimeout, func(ctx context.Context) error { done(ctx); return nil })
	if err := ping(ctx, client, cfg, f.acquireTimeout()); err != nil {
		return err
	}
	return execLocked(ctx, take, argv, f, s)
}

// newTaker builds what exec acquires: an EphemeralLock renewed for as long
// as the command runs, or with -n a slot of a semaphore through a Locker
// whose session TTL is -ttl, its leases renewed until released. done
// closes what it built, unless a slot was taken: releasing the slot does.
func newTaker(name string, opts []consullock.Option, f execFlags) (take func(context.Context) (held, error), done func(context.Context), err error) {
	if f.n == 1 {
		lock, err := consullock.NewEphemeralLock(name, append(opts, consullock.WithLockTimeout(f.ttl), consullock.WithRenewal())...)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context) (held, error) { return lock, lock.Acquire(ctx) }, func(context.Context) {}, nil
	}
	lk, err := consullock.NewLocker(append(opts, consullock.WithSessionTTL(f.ttl), consullock.WithRenewal())...)
	if err != nil {
		return nil, nil, err
	}
	sem, err := lk.Semaphore(name, f.n)
	if err != nil {
		return nil, nil, err
	}
	leased := false
	take = func(ctx context.Context) (held, error) {
		lease, err := sem.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		leased = true
		return semLease{lease, lk}, nil
	}
	done = func(ctx context.Context) {
		if !leased { // else the lease's Release closes lk, within its bound
			lk.Close(ctx)
		}
	}
	return take, done, nil
}

// semLease is the slot that exec -n holds: its Release also closes the
// Locker that took it, within the same bound, since exec takes one slot.
type semLease struct {
	*consullock.Lease
	lk *consullock.Locker
}

// Release gives the slot back and destroys the Locker's session.
func (l semLease) Release(ctx context.Context) error {
	return errors.Join(l.Lease.Release(ctx), l.lk.Close(ctx))
}

// held is what exec needs of a lock it holds: an EphemeralLock, or a
// semaphore's Lease.
type held interface {
	Key() string
	Session() string
	Token() uint64
	Lost() <-chan struct{}
	Err() error
	Release(ctx context.Context) error
}

func (f *execFlags) validate() error {
	switch {
	case f.timeout < 0 || f.maxHold < 0 || f.grace < 0:
		return usageError{errors.New("-timeout, -max-hold and -grace must not be negative")}
	case f.try && f.timeout > 0:
		return usageError{errors.New("-try and -timeout exclude each other")}
	case f.n < 1:
		return usageError{fmt.Errorf("-n %d: at least one holder", f.n)}
	case f.conflict < 0 || f.conflict > 255:
		return usageError{fmt.Errorf("-conflict-exit-code %d outside 0..255", f.conflict)}
	}
	return nil
}

// acquireTimeout maps the flags onto the library: -try is one attempt, and
// -timeout 0 waits for as long as ctx allows.
func (f *execFlags) acquireTimeout() time.Duration {
	switch {
	case f.try:
		return 0
	case f.timeout == 0:
		return 1<<63 - 1
	}
	return f.timeout
}

// execLocked acquires the lock, runs argv under it, and releases it.
func execLocked(ctx context.Context, take func(context.Context) (held, error), argv []string, f execFlags, s stdio) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	lock, err := take(ctx)
	if err == nil {
		// From here on the lock is given back whatever happens: also when a
		// signal came just as it was taken, or went on to the command.
		defer release(lock, f.ttl, s)
	}
	switch {
	case ctx.Err() != nil:
		return exitError{128 + int(lastSignal(sigs, syscall.SIGINT)), "interrupted while waiting for the lock"}
	case errors.Is(err, consullock.ErrNotAcquired):
		return exitError{f.conflict, err.Error()}
	case err != nil:
		return exitError{exitUnavailable, err.Error()}
	}
	return supervise(lock, argv, f, sigs, s)
}

// How long exec waits, once the command has stopped, to give the lock back
// (a round trip or two to a healthy agent) or, after a loss, to destroy its
// session: an agent that does not answer by then is not waited for, and
// Consul frees the lock when the session's TTL runs out.
const (
	releaseTimeout     = 2 * time.Second
	lostReleaseTimeout = time.Second
)

// release gives the lock back, within releaseTimeout, and says so on
// stderr when it could not. After a loss there is nothing of ours left to
// give back: the session is destroyed if the agent answers within
// lostReleaseTimeout, else its TTL frees it, and nothing more is said.
func release(lock held, ttl time.Duration, s stdio) {
	if lock.Err() != nil {
		within(lostReleaseTimeout, lock.Release)
		return
	}
	if err := within(releaseTimeout, lock.Release); err != nil {
		fmt.Fprintf(s.errOut, "consul-lock exec: %v; Consul frees the lock when its session's TTL (-ttl %v) runs out, within twice that\n", err, ttl)
	}
}

// within runs fn with a context that ends after d, and waits no longer than
// that for it, also when fn outlives its context (the library's releases
// retry for up to 10 s whatever the context): what is left of fn ends with
// the process.
func within(d time.Duration, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- fn(ctx) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return fmt.Errorf("could not release the lock: no answer from Consul within %v", d)
	}
}

// supervise runs the command in a process group of its own and waits for it,
// passing on signals, and stops it when the lock is lost or -max-hold ends.
func supervise(lock held, argv []string, f execFlags, sigs <-chan os.Signal, s stdio) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.in, s.out, s.errOut
	cmd.Env = append(os.Environ(),
		"CONSUL_LOCK_KEY="+lock.Key(),
		"CONSUL_LOCK_SESSION="+lock.Session(),
		"CONSUL_LOCK_TOKEN="+strconv.FormatUint(lock.Token(), 10))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return exitError{exitNotFound, err.Error()}
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	var maxHold <-chan time.Time
	if f.maxHold > 0 {
		t := time.NewTimer(f.maxHold)
		defer t.Stop()
		maxHold = t.C
	}
	for {
		select {
		case <-done:
			return exitError{status(cmd.ProcessState), ""}
		case sig := <-sigs:
			syscall.Kill(-cmd.Process.Pid, sig.(syscall.Signal))
		case <-lock.Lost():
			fmt.Fprintf(s.errOut, "consul-lock exec: %v; stopping the command\n", lock.Err())
			stop(cmd.Process.Pid, f.grace, done)
			return exitError{exitLost, ""}
		case <-maxHold:
			fmt.Fprintf(s.errOut, "consul-lock exec: -max-hold %v ran out; stopping the command\n", f.maxHold)
			stop(cmd.Process.Pid, f.grace, done)
			return exitError{exitMaxHold, ""}
		}
	}
}

// stop sends SIGTERM to the process group, SIGKILL after grace, and waits
// for the command to exit.
func stop(pid int, grace time.Duration, done <-chan struct{}) {
	syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	syscall.Kill(-pid, syscall.SIGKILL) // children that outlived the command
}

// status is the shell's view of how a process ended.
func status(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// lastSignal returns the signal that interrupted us, or def.
func lastSignal(sigs <-chan os.Signal, def syscall.Signal) syscall.Signal {
	select {
	case sig := <-sigs:
		return sig.(syscall.Signal)
	default:
		return def
	}
}
