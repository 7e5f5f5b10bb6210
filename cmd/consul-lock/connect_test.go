package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/consultest"
	"github.com/consullock/consullock/internal/faultproxy"
)

// An agent that answers 429 (too many connections from this host) at
// start-up is asked again rather than reported unreachable; one that keeps
// answering 429 is reported with the limit named, even when the time runs
// out during a slow request rather than after a 429 (as on a loaded host).
func TestStartUpRetriesTooManyRequests(t *testing.T) {
	t.Parallel()
	proxy, err := faultproxy.Start(consultest.Shared(t).HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	var refused, slowAfter atomic.Int32
	limit := int32(3)
	slowAfter.Store(1 << 30)
	proxy.SetSlow(time.Minute)
	proxy.SetRule(func(r *http.Request) (faultproxy.Fault, bool) {
		if r.URL.Path != "/v1/status/leader" {
			return faultproxy.Pass, false
		}
		if refused.Load() >= slowAfter.Load() {
			return faultproxy.Slow, true
		}
		if refused.Load() < atomic.LoadInt32(&limit) {
			refused.Add(1)
			return faultproxy.Status429, true
		}
		return faultproxy.Pass, false
	})
	run := func() (int, string) {
		cmd := exec.Command(bin, "status", lockKey(t))
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+proxy.Addr())
		var errb strings.Builder
		cmd.Stderr = &errb
		cmd.Run()
		return cmd.ProcessState.ExitCode(), errb.String()
	}
	if code, errOut := run(); code != 1 || refused.Load() != 3 {
		t.Fatalf("status after 3 answers of 429: exit %d (%s), %d refused; want 1 (free) after 3", code, errOut, refused.Load())
	}
	refused.Store(0)
	atomic.StoreInt32(&limit, 1<<30)
	if code, errOut := run(); code != exitUnavailable || !strings.Contains(errOut, "http_max_conns_per_client") {
		t.Fatalf("status while the agent answers 429: exit %d (%s), want %d naming the limit", code, errOut, exitUnavailable)
	}
	refused.Store(0)
	slowAfter.Store(2) // two 429s, then a request that outlasts the start-up's time
	if code, errOut := run(); code != exitUnavailable || !strings.Contains(errOut, "http_max_conns_per_client") {
		t.Fatalf("status when the time runs out after 429s: exit %d (%s), want %d naming the limit", code, errOut, exitUnavailable)
	}
}

// Every command's client keeps its connection to the agent alive: twenty
// requests in a row open one connection, not twenty (consul/api's
// non-pooled configuration opens one per request, which cost the bench a
// TCP handshake per write and skewed every figure it printed).
func TestClientsReuseTheirConnection(t *testing.T) {
	t.Parallel()
	agent := &url.URL{Scheme: "http", Host: consultest.Shared(t).HTTPAddr()}
	var opened atomic.Int32
	front := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(agent))
	front.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			opened.Add(1)
		}
	}
	front.Start()
	defer front.Close()
	cfg := tunedConfig()
	cfg.Address = front.Listener.Addr().String()
	defer cfg.Transport.CloseIdleConnections()
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := client.Status().Leader(); err != nil {
			t.Fatal(err)
		}
	}
	if n := opened.Load(); n != 1 {
		t.Fatalf("20 requests opened %d connections, want 1", n)
	}
	if !cfg.Transport.DisableCompression {
		t.Error("the client asks for compressed answers")
	}
}
