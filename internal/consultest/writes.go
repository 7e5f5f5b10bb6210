package consultest

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consulagent"
)

// Writes counts the writes a client sends: its requests other than GET and
// session renewals, which reset a timer and are no consensus write. Unlike
// Consul's Raft index, it counts no write of Consul's own (coordinates,
// autopilot, a new leader's setup), so a test can ask for an exact figure.
type Writes struct {
	n    atomic.Int64
	next http.RoundTripper
}

// Count is the number of writes sent so far.
func (w *Writes) Count() int64 { return w.n.Load() }

// RoundTrip counts r if it is a write and sends it on.
func (w *Writes) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet && !strings.HasPrefix(r.URL.Path, "/v1/session/renew/") {
		w.n.Add(1)
	}
	return w.next.RoundTrip(r)
}

// CountingClientOf returns a client of dev agent a (no ACLs, no TLS) of its
// own, and the count of the writes it sends.
func CountingClientOf(tb testing.TB, a *consulagent.Agent) (*api.Client, *Writes) {
	tb.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.HTTPAddr()
	w := &Writes{next: cfg.Transport}
	cfg.HttpClient = &http.Client{Transport: w}
	c, err := api.NewClient(cfg)
	if err != nil {
		tb.Fatalf("consultest: client for %s: %v", a.HTTPAddr(), err)
	}
	tb.Cleanup(cfg.Transport.CloseIdleConnections)
	return c, w
}
