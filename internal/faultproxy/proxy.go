// Package faultproxy is an HTTP proxy for tests that stands between a Consul
// client and a real agent and breaks requests on purpose: it adds latency,
// answers 500 or 429 in Consul's words, and resets connections before or
// after the agent has seen the request.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Fault is one way of breaking a request.
type Fault int

// The faults. ResetAfter is the ambiguous one: the agent applied the request
// but the client never hears the answer.
const (
	Pass        Fault = iota // forwarded untouched
	Status500                // answered "500 No cluster leader", as during an election
	Status429                // answered "429 Too Many Requests", as a rate-limited agent does
	ResetBefore              // the connection reset before forwarding
	ResetAfter               // a write forwarded, then the connection reset before the answer
	Slow                     // forwarded after the delay set by SetSlow
)

var faultNames = [...]string{"pass", "500", "429", "reset-before", "reset-after", "slow"}

func (f Fault) String() string { return faultNames[f] }

// Proxy forwards HTTP requests to one agent, breaking some of them.
type Proxy struct {
	srv       *http.Server
	ln        net.Listener
	target    string
	transport *http.Transport
	forward   *httputil.ReverseProxy

	mu       sync.Mutex
	rate     float64
	kinds    []Fault
	latency  time.Duration
	slow     time.Duration
	counts   map[Fault]int
	blocking int
	waiting  int // blocking queries in flight now
	maxWait  int // the most ever in flight at once
	rule     func(*http.Request) (Fault, bool)
	paths    map[string]int // requests by method and path
	cut      bool
	conns    map[net.Conn]struct{} // the clients' connections open now
}

// Start listens on a free loopback port and forwards to the agent at
// target (host:port, plain HTTP).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &url.URL{Scheme: "http", Host: target}
	p := &Proxy{ln: ln, target: target, transport: &http.Transport{}, counts: map[Fault]int{}, paths: map[string]int{}, conns: map[net.Conn]struct{}{}}
	p.forward = httputil.NewSingleHostReverseProxy(u)
	p.forward.Transport = p.transport
	p.forward.FlushInterval = -1
	quiet := log.New(io.Discard, "", 0) // cancelled requests are expected here
	p.forward.ErrorLog = quiet
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ErrorLog: quiet, ConnState: p.track}
	go p.srv.Serve(ln)
	return p, nil
}

// Addr is the proxy's address, host:port, for a client's Address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetFaults breaks each request with probability rate, with a fault drawn
// evenly from kinds. A rate of 0 forwards everything.
func (p *Proxy) SetFaults(rate float64, kinds ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate, p.kinds = rate, kinds
}

// SetRule decides the fault of each request before the random draw: when
// rule returns true, its fault is the request's. A nil rule removes it.
func (p *Proxy) SetRule(rule func(r *http.Request) (Fault, bool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rule = rule
}

// Requests returns how many requests with method whose path starts with
// prefix reached the proxy so far.
func (p *Proxy) Requests(method, prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for k, v := range p.paths {
		if strings.HasPrefix(k, method+" "+prefix) {
			n += v
		}
	}
	return n
}

// SetSlow sets how long the Slow fault holds a request before forwarding it.
func (p *Proxy) SetSlow(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slow = d
}

// SetLatency delays every request by d before anything else happens to it.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// Cut drops every client connection open now, blocking queries in flight
// included, and resets each later one until Mend: the client is cut off
// from the agent, as if the agent were gone, while the agent runs.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Mend ends a Cut.
func (p *Proxy) Mend() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

func (p *Proxy) track(c net.Conn, st http.ConnState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch st {
	case http.StateNew:
		p.conns[c] = struct{}{}
	case http.StateHijacked, http.StateClosed:
		delete(p.conns, c)
	}
}

// Counts returns how many requests met each fault so far.
func (p *Proxy) Counts() map[Fault]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[Fault]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	p.transport.CloseIdleConnections()
	return err
}

func (p *Proxy) draw(r *http.Request) (Fault, time.Duration) {
	f, latency := p.drawFault(r)
	if f == Slow {
		p.mu.Lock()
		latency += p.slow
		p.mu.Unlock()
	}
	return f, latency
}

func (p *Proxy) drawFault(r *http.Request) (Fault, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paths[r.Method+" "+r.URL.Path]++
	f := Pass
	ruled := false
	if p.rule != nil {
		if rf, ok := p.rule(r); ok {
			f, ruled = rf, true
		}
	}
	if p.cut {
		f, ruled = ResetBefore, true
	}
	if !ruled && len(p.kinds) > 0 && rand.Float64() < p.rate {
		f = p.kinds[rand.IntN(len(p.kinds))]
	}
	if f == ResetAfter && r.Method == http.MethodGet {
		f = ResetBefore // a blocking query could hold the reset for minutes
	}
	if idx := r.URL.Query().Get("index"); idx != "" && idx != "0" {
		p.blocking++
	}
	p.counts[f]++
	return f, p.latency
}

// BlockingQueries returns how many blocking queries (GETs with an index)
// reached the proxy so far.
func (p *Proxy) BlockingQueries() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blocking
}

// BlockingInFlight returns how many blocking queries are in flight now, and
// the most that ever were at once.
func (p *Proxy) BlockingInFlight() (now, most int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting, p.maxWait
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	if idx := r.URL.Query().Get("index"); idx != "" && idx != "0" {
		p.mu.Lock()
		p.waiting++
		p.maxWait = max(p.maxWait, p.waiting)
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
		}()
	}
	fault, latency := p.draw(r)
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}
	switch fault {
	case Pass, Slow:
		p.forward.ServeHTTP(w, r)
	case Status500:
		http.Error(w, "No cluster leader", http.StatusInternalServerError)
	case Status429:
		http.Error(w, "rate limit exceeded: Too Many Requests", http.StatusTooManyRequests)
	case ResetBefore:
		reset(w)
	case ResetAfter:
		p.applyThenReset(w, r)
	}
}

// applyThenReset sends the request to the agent, waits for its answer, and
// throws the answer away with the connection.
func (p *Proxy) applyThenReset(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(context.WithoutCancel(r.Context()))
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = "http", p.target
	if resp, err := p.transport.RoundTrip(out); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	reset(w)
}

// reset closes the client's connection with a TCP RST.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(errors.New("faultproxy: cannot hijack the connection: " + err.Error()))
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	conn.Close()
}
