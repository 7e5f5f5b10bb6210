// Package consultest runs consullock's tests against real Consul agents that
// it starts on loopback: a dev agent shared by a package's tests, and
// dedicated agents and clusters for tests that break them. A test that needs
// Consul and cannot get it fails with the reason; it never skips.
package consultest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/consullock/consullock/internal/consulagent"
)

var (
	binOnce sync.Once
	bin     string
	binErr  error

	sharedOnce sync.Once
	shared     *consulagent.Agent
	sharedErr  error
	sharedDir  string
)

// Main runs the package's tests and then fails the run if they left a
// Consul session, a key or a goroutine behind. Use it as the package's
// TestMain. The shared dev agent is started by the first test that asks
// for it (and before the tests when examples will run, since they find it
// through CONSUL_HTTP_ADDR as a user's code would): tests of pure logic
// run without Consul, and without building it.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main that returns the exit code instead, for a TestMain with more
// to do.
func Run(m *testing.M) int {
	if fuzzWorker() { // go test -fuzz's workers run only the fuzz function
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "consultest-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	defer os.RemoveAll(dir)
	sharedDir = dir
	defer func() {
		if shared != nil {
			shared.Stop() // also on the early returns; Stop is idempotent
		}
	}()
	if examplesWillRun() {
		if err := startShared(); err != nil {
			return fail("cannot start a Consul dev agent: %v", err)
		}
	}
	code := m.Run()
	if code != 0 {
		return code
	}
	if shared != nil {
		if err := checkClean(context.Background()); err != nil {
			return fail("%v", err)
		}
		shared.Stop() // its process's waiter goroutine must end before the leak check
	}
	// Pooled HTTP clients such as api.DefaultConfig's keep idle connections,
	// with their two goroutines, for reuse; that is not a leak of ours.
	if err := goleak.Find(
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	); err != nil {
		return fail("goroutines left behind: %v", err)
	}
	return 0
}

// examplesWillRun reports whether the -run pattern (none runs everything)
// selects examples.
func examplesWillRun() bool {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	re, err := regexp.Compile(strings.SplitN(f.Value.String(), "/", 2)[0])
	return err != nil || re.MatchString("Example")
}

// startShared starts the shared dev agent, once.
func startShared() error {
	sharedOnce.Do(func() {
		b, err := binary()
		if err != nil {
			sharedErr = fmt.Errorf("no Consul binary: %w", err)
			return
		}
		a, err := consulagent.Start(context.Background(), consulagent.Options{Bin: b, Dir: filepath.Join(sharedDir, "shared"), Name: "shared", Dev: true})
		if err != nil {
			sharedErr = err
			return
		}
		shared = a
		// Code written as a user would, such as the runnable examples, finds
		// the agent where api.DefaultConfig looks.
		os.Setenv("CONSUL_HTTP_ADDR", a.HTTPAddr())
	})
	return sharedErr
}

func fuzzWorker() bool {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			return true
		}
	}
	return false
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "consultest: "+format+"\n", args...)
	return 1
}

// binary builds the pinned Consul once per test process.
func binary() (string, error) {
	binOnce.Do(func() { bin, binErr = consulagent.Binary(context.Background(), os.Stderr) })
	return bin, binErr
}

// checkClean reports sessions and keys left in the shared agent.
func checkClean(ctx context.Context) error {
	c, closeIdle, err := shared.Client()
	if err != nil {
		return err
	}
	defer closeIdle()
	q := (&api.QueryOptions{}).WithContext(ctx)
	sessions, _, err := c.Session().List(q)
	if err != nil {
		return fmt.Errorf("list sessions: %w", err)
	}
	keys, _, err := c.KV().Keys("", "", q)
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	var left []string
	for _, s := range sessions {
		left = append(left, "session "+s.ID+" ("+s.Name+")")
	}
	for _, k := range keys {
		left = append(left, "key "+k)
	}
	if len(left) > 0 {
		return fmt.Errorf("the tests left behind in Consul:\n  %s", strings.Join(left, "\n  "))
	}
	return nil
}

// Client returns a client of the shared dev agent whose idle connections are
// closed when the test ends. It starts the agent if it is not running yet,
// and fails the test with the reason when it cannot.
func Client(tb testing.TB) *api.Client {
	tb.Helper()
	if sharedDir == "" {
		tb.Fatal("consultest: no shared Consul agent: call consultest.Main from TestMain")
	}
	if err := startShared(); err != nil {
		tb.Fatalf("consultest: cannot start the shared Consul dev agent: %v", err)
	}
	return client(tb, shared)
}

// Shared returns the shared dev agent.
func Shared(tb testing.TB) *consulagent.Agent {
	tb.Helper()
	Client(tb)
	return shared
}

func client(tb testing.TB, a *consulagent.Agent) *api.Client {
	tb.Helper()
	c, closeIdle, err := a.Client()
	if err != nil {
		tb.Fatalf("consultest: client for %s: %v", a.HTTPAddr(), err)
	}
	tb.Cleanup(closeIdle)
	return c
}

// ClientOf returns a client of agent a whose idle connections are closed
// when the test ends.
func ClientOf(tb testing.TB, a *consulagent.Agent) *api.Client { return client(tb, a) }

// ClientAt returns a client of its own for the agent at addr (an agent the
// test did not start through this package, or a proxy in front of one),
// whose idle connections are closed when the test ends.
func ClientAt(tb testing.TB, addr string) *api.Client {
	tb.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		tb.Fatalf("consultest: client for %s: %v", addr, err)
	}
	tb.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// DevAgent starts a dev agent of the test's own, for tests that stop,
// freeze or restart it, or that need ACLs or TLS (set by configure); it is
// killed when the test ends.
func DevAgent(tb testing.TB, configure ...func(*consulagent.Options)) *consulagent.Agent {
	tb.Helper()
	b, err := binary()
	if err != nil {
		tb.Fatalf("consultest: no Consul binary: %v", err)
	}
	opts := consulagent.Options{Bin: b, Dir: tb.TempDir(), Name: "dev", Dev: true}
	for _, c := range configure {
		c(&opts)
	}
	a, err := consulagent.Start(context.Background(), opts)
	if err != nil {
		tb.Fatalf("consultest: cannot start a Consul dev agent: %v", err)
	}
	tb.Cleanup(func() { a.Kill() })
	return a
}

// Cluster starts n servers of the test's own, killed when the test ends.
func Cluster(tb testing.TB, n int) *consulagent.Cluster {
	tb.Helper()
	return Topology(tb, consulagent.Topology{Servers: n})
}

// Topology starts servers and client agents of the test's own, killed when
// the test ends. Applications in production reach Consul through the
// client agent on their host: tests of that path talk to c.Clients.
func Topology(tb testing.TB, t consulagent.Topology) *consulagent.Cluster {
	tb.Helper()
	b, err := binary()
	if err != nil {
		tb.Fatalf("consultest: no Consul binary: %v", err)
	}
	c, err := consulagent.StartTopology(context.Background(), b, tb.TempDir(), t)
	if err != nil {
		tb.Fatalf("consultest: cannot start a Consul cluster of %d servers and %d client agents: %v", t.Servers, t.Clients, err)
	}
	tb.Cleanup(c.Stop)
	return c
}

// Eventually waits until cond holds, checking every 10 ms, and fails the
// test with msg when it does not within d.
func Eventually(tb testing.TB, d time.Duration, msg string, cond func() bool) {
	tb.Helper()
	Settles(tb, d, msg, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	})
}

// Settles waits until check reports nothing left to say (""), polling, and
// fails the test with msg and check's last words if that takes longer than d.
func Settles(tb testing.TB, d time.Duration, msg string, check func() string) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		left := check()
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: %s (%s)", d, msg, left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// DestroyConsulLockSessions destroys the sessions that `consul lock PREFIX`
// made for prefix: it exits before its own clean-up of them is done.
func DestroyConsulLockSessions(tb testing.TB, c *api.Client, prefix string) {
	tb.Helper()
	all, _, err := c.Session().List(nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range all {
		if strings.HasPrefix(s.Name, "Consul lock for ") && strings.HasSuffix(s.Name, " at '"+prefix+"'") {
			c.Session().Destroy(s.ID, nil)
		}
	}
}
