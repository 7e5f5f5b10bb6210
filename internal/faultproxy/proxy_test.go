package faultproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Each fault does what it says to a request, as a client sees it and as the
// server behind the proxy sees it, and is counted.
func TestFaults(t *testing.T) {
	var served atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, "ok")
	}))
	defer backend.Close()
	p, err := Start(strings.TrimPrefix(backend.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	send := func(method string) (int, error) {
		req, _ := http.NewRequest(method, "http://"+p.Addr()+"/v1/kv/x", nil)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	for _, tc := range []struct {
		fault      Fault
		method     string
		wantStatus int  // 0: the connection is reset
		wantServed bool // the request reached the server
	}{
		{Pass, http.MethodGet, 200, true},
		{Status500, http.MethodGet, 500, false},
		{Status429, http.MethodPut, 429, false},
		{ResetBefore, http.MethodPut, 0, false},
		{ResetAfter, http.MethodPut, 0, true},
		{ResetAfter, http.MethodGet, 0, false}, // a GET is reset before: it could be a blocking query
	} {
		p.SetFaults(1, tc.fault)
		before := served.Load()
		status, err := send(tc.method)
		if tc.wantStatus == 0 && err == nil || tc.wantStatus != 0 && status != tc.wantStatus {
			t.Errorf("%v on %s: status %d, error %v; want status %d", tc.fault, tc.method, status, err, tc.wantStatus)
		}
		if got := served.Load() > before; got != tc.wantServed {
			t.Errorf("%v on %s: reached the server %v, want %v", tc.fault, tc.method, got, tc.wantServed)
		}
	}
	p.SetFaults(0)
	p.SetLatency(50 * time.Millisecond)
	start := time.Now()
	if status, err := send(http.MethodGet); err != nil || status != 200 {
		t.Fatalf("after SetFaults(0): %d, %v", status, err)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("a request with 50ms of latency took %v", took)
	}
	counts := p.Counts()
	if counts[Pass] != 2 || counts[Status500] != 1 || counts[Status429] != 1 || counts[ResetBefore] != 2 || counts[ResetAfter] != 1 {
		t.Errorf("counts %v", counts)
	}
}

// Cut drops a request in flight (a blocking query, here one the server
// holds) and resets later ones, while the server runs; Mend ends it.
func TestCut(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("index") != "" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	defer backend.Close()
	defer close(release)
	p, err := Start(strings.TrimPrefix(backend.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	get := func(query string) error {
		resp, err := client.Get("http://" + p.Addr() + "/v1/kv/x" + query)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	blocked := make(chan error, 1)
	go func() { blocked <- get("?index=5") }()
	for now, _ := p.BlockingInFlight(); now == 0; now, _ = p.BlockingInFlight() {
		time.Sleep(time.Millisecond)
	}
	p.Cut()
	select {
	case err := <-blocked:
		if err == nil {
			t.Fatal("the request in flight got an answer through a cut")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request in flight was not dropped by Cut")
	}
	if get("") == nil {
		t.Fatal("a request after Cut got an answer")
	}
	p.Mend()
	if err := get(""); err != nil {
		t.Fatalf("after Mend: %v", err)
	}
}
