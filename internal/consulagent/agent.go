package consulagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// readyTimeout bounds how long an agent may take to answer, elect a leader
// and pass its serfHealth check. Measured here: under a second for a dev
// agent, about 2 s for a 3-server cluster.
const readyTimeout = 60 * time.Second

// Options describe one agent.
type Options struct {
	Bin  string // the Consul binary (see Binary)
	Dir  string // a folder of its own: config, data and log
	Name string // node name

	// Dev runs an in-memory single-server dev agent. Otherwise the agent is a
	// server with its data in Dir that waits for BootstrapExpect servers, or
	// with Client a client agent, which serves the HTTP API and forwards to
	// the servers over RPC, as each host runs in production.
	Dev             bool
	Client          bool
	BootstrapExpect int
	Join            []string // serf LAN addresses of the servers

	// Extra is merged into the agent's JSON configuration.
	Extra map[string]any

	// ACLToken, when set, turns ACLs on with default deny and makes this
	// token the management token and the agent's own; Client uses it.
	ACLToken string

	// TLS, when set, serves the HTTP API over HTTPS only, with these files.
	TLS *TLSFiles
}

// TLSFiles are the PEM files of an HTTPS-only agent.
type TLSFiles struct {
	CA, Cert, Key string
}

// Ports are an agent's listeners; the ones it does not need are disabled,
// so that agents never clash on a default port such as 8503.
type Ports struct {
	HTTP, SerfLAN, Server int
}

// Agent is a running Consul agent process.
type Agent struct {
	opts  Options
	Ports Ports

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// Start picks free ports and starts an agent, and for a dev agent waits
// until it is ready. A cluster server is ready only once its peers have
// joined: see Cluster.
func Start(ctx context.Context, opts Options) (*Agent, error) {
	var lastErr error
	for range 3 { // a free port can be taken by someone else before Consul binds it
		ports, err := freePorts()
		if err != nil {
			return nil, err
		}
		a := &Agent{opts: opts, Ports: ports}
		if err := a.ensureDir(); err != nil {
			return nil, err
		}
		if lastErr = a.start(); lastErr != nil {
			continue
		}
		if !opts.Dev {
			return a, nil
		}
		if lastErr = a.WaitReady(ctx); lastErr == nil {
			return a, nil
		}
		a.Kill()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// HTTPAddr is the agent's HTTP API address, host:port (HTTPS with TLS).
func (a *Agent) HTTPAddr() string { return "127.0.0.1:" + strconv.Itoa(a.Ports.HTTP) }

// SerfLANAddr is the address other servers join.
func (a *Agent) SerfLANAddr() string { return "127.0.0.1:" + strconv.Itoa(a.Ports.SerfLAN) }

// Name is the agent's node name.
func (a *Agent) Name() string { return a.opts.Name }

// LogPath is the file the agent writes its log to.
func (a *Agent) LogPath() string { return filepath.Join(a.opts.Dir, "consul.log") }

// Client returns a Consul client for this agent, and a function that closes
// its idle connections, so that a test ends with no goroutine left.
func (a *Agent) Client() (*api.Client, func(), error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.HTTPAddr()
	cfg.Scheme = "http"
	cfg.Token = a.opts.ACLToken
	if a.opts.TLS != nil {
		cfg.Scheme = "https"
		cfg.TLSConfig = api.TLSConfig{CAFile: a.opts.TLS.CA}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, cfg.Transport.CloseIdleConnections, nil
}

func (a *Agent) ensureDir() error { return os.MkdirAll(a.opts.Dir, 0o755) }

func (a *Agent) config() map[string]any {
	cfg := map[string]any{
		"node_name":            a.opts.Name,
		"datacenter":           "dc1",
		"bind_addr":            "127.0.0.1",
		"client_addr":          "127.0.0.1",
		"advertise_addr":       "127.0.0.1",
		"server":               !a.opts.Client,
		"log_level":            "warn",
		"disable_update_check": true,
		"ui_config":            map[string]any{"enabled": false},
		"performance":          map[string]any{"raft_multiplier": 1},
		"ports": map[string]any{
			"http": a.Ports.HTTP, "serf_lan": a.Ports.SerfLAN, "server": a.Ports.Server,
			"https": -1, "dns": -1, "grpc": -1, "grpc_tls": -1, "serf_wan": -1,
		},
	}
	if a.opts.ACLToken != "" {
		cfg["acl"] = map[string]any{
			"enabled": true, "default_policy": "deny", "down_policy": "extend-cache",
			"tokens": map[string]any{"initial_management": a.opts.ACLToken, "agent": a.opts.ACLToken},
		}
	}
	if t := a.opts.TLS; t != nil {
		ports := cfg["ports"].(map[string]any)
		ports["https"], ports["http"] = ports["http"], -1
		cfg["tls"] = map[string]any{"https": map[string]any{
			"ca_file": t.CA, "cert_file": t.Cert, "key_file": t.Key, "verify_incoming": false,
		}}
	}
	if !a.opts.Dev {
		cfg["data_dir"] = filepath.Join(a.opts.Dir, "data")
		cfg["retry_join"] = a.opts.Join
		cfg["retry_interval"] = "200ms"
	}
	if !a.opts.Dev && !a.opts.Client {
		cfg["bootstrap_expect"] = a.opts.BootstrapExpect
	}
	for k, v := range a.opts.Extra {
		cfg[k] = v
	}
	return cfg
}

// start writes the configuration and starts the process in a process group
// of its own, which dies with the process that started it.
func (a *Agent) start() error {
	conf, err := json.MarshalIndent(a.config(), "", "  ")
	if err != nil {
		return err
	}
	confPath := filepath.Join(a.opts.Dir, "consul.json")
	if err := os.WriteFile(confPath, conf, 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(a.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"agent", "-config-file", confPath}
	if a.opts.Dev {
		args = append(args, "-dev")
	}
	cmd := exec.Command(a.opts.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", a.opts.Bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()
	return nil
}

// WaitReady waits until the agent answers, knows a leader, and its own
// serfHealth check passes (which Consul requires to create a session).
func (a *Agent) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	c, closeIdle, err := a.Client()
	if err != nil {
		return err
	}
	defer closeIdle()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		a.mu.Lock()
		exited := a.exited
		a.mu.Unlock()
		select {
		case <-exited:
			return &exitError{name: a.opts.Name, log: a.logTail()}
		case <-ctx.Done():
			return fmt.Errorf("consul agent %s not ready after %v: %w; log:\n%s", a.opts.Name, readyTimeout, ctx.Err(), a.logTail())
		case <-tick.C:
		}
		if ready(ctx, c, a.opts.Name) {
			return nil
		}
	}
}

// isReady is one readiness check of WaitReady.
func (a *Agent) isReady(ctx context.Context) bool {
	c, closeIdle, err := a.Client()
	if err != nil {
		return false
	}
	defer closeIdle()
	return ready(ctx, c, a.opts.Name)
}

func ready(ctx context.Context, c *api.Client, node string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := c.Status().LeaderWithQueryOptions(q)
	if err != nil || leader == "" {
		return false
	}
	checks, _, err := c.Health().Node(node, q)
	if err != nil {
		return false
	}
	for _, chk := range checks {
		if chk.CheckID == "serfHealth" && chk.Status == api.HealthPassing {
			return true
		}
	}
	return false
}

// exitedEarly returns an *exitError if the agent's process has exited since
// it was started, and nil while it runs.
func (a *Agent) exitedEarly() error {
	a.mu.Lock()
	exited := a.exited
	a.mu.Unlock()
	select {
	case <-exited:
		return &exitError{name: a.opts.Name, log: a.logTail()}
	default:
		return nil
	}
}

// Leave asks the agent to leave the cluster gracefully (`consul leave`), as
// an operator draining a host does; Consul then invalidates the sessions of
// its node. It waits until the process has exited.
func (a *Agent) Leave(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, a.opts.Bin, "leave", "-http-addr="+a.HTTPAddr()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("consul leave %s: %w: %s", a.opts.Name, err, out)
	}
	a.mu.Lock()
	exited := a.exited
	a.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("consul agent %s did not exit after leaving: %w", a.opts.Name, ctx.Err())
	}
}

// Stop ends the agent with SIGTERM, and SIGKILL if it lingers, and waits
// for it to exit.
func (a *Agent) Stop() error {
	return a.signalAndWait(syscall.SIGTERM, 5*time.Second)
}

// Kill ends the agent with SIGKILL, as a crash would, and waits for it.
func (a *Agent) Kill() error { return a.signalAndWait(syscall.SIGKILL, 0) }

// Restart starts a stopped or killed agent again with the same ports and
// data, and waits until its process runs.
func (a *Agent) Restart() error {
	if a.Running() {
		return errors.New("consul agent " + a.opts.Name + " is still running")
	}
	return a.start()
}

// PID is the process id of the agent, which leads its process group.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Running reports whether the agent's process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.exited == nil {
		return false
	}
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// Freeze stops the agent's process group with SIGSTOP; Thaw resumes it.
func (a *Agent) Freeze() error { return a.signalGroup(syscall.SIGSTOP) }

// Thaw resumes an agent stopped by Freeze.
func (a *Agent) Thaw() error { return a.signalGroup(syscall.SIGCONT) }

func (a *Agent) signalGroup(sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.cmd.Process == nil {
		return errors.New("consul agent " + a.opts.Name + " not started")
	}
	return syscall.Kill(-a.cmd.Process.Pid, sig)
}

func (a *Agent) signalAndWait(sig syscall.Signal, grace time.Duration) error {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-exited: // its process group id may already belong to someone else
		return nil
	default:
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT) // a frozen agent cannot act on SIGTERM
	syscall.Kill(-cmd.Process.Pid, sig)
	if grace > 0 {
		select {
		case <-exited:
			return nil
		case <-time.After(grace):
		}
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	return nil
}

// exitError says that an agent exited before it was ready, most often
// because another process took one of its ports first.
type exitError struct{ name, log string }

func (e *exitError) Error() string {
	return "consul agent " + e.name + " exited before it was ready:\n" + e.log
}

func (a *Agent) logTail() string {
	b, _ := os.ReadFile(a.LogPath())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// freePorts asks the kernel for free loopback ports. The serf port must be
// free for both TCP and UDP.
func freePorts() (Ports, error) {
	var p Ports
	var err error
	if p.HTTP, err = freeTCP(); err != nil {
		return p, err
	}
	if p.Server, err = freeTCP(); err != nil {
		return p, err
	}
	for range 20 {
		if p.SerfLAN, err = freeTCP(); err != nil {
			return p, err
		}
		if u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p.SerfLAN)); err == nil {
			u.Close()
			return p, nil
		}
	}
	return p, errors.New("no port free for both TCP and UDP on 127.0.0.1")
}

func freeTCP() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
