package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// connFlags are the connection settings, read from the standard Consul
// environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE,
// CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
// CONSUL_NAMESPACE) as the consul command reads them, and overridden by the
// flags of the same meaning.
type connFlags struct {
	addr, token, tokenFile, caFile, clientCert, clientKey, namespace string
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "http-addr", "", "Consul HTTP `address` (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&c.token, "token", "", "ACL `token` (default $CONSUL_HTTP_TOKEN)")
	fs.StringVar(&c.tokenFile, "token-file", "", "`file` holding the ACL token (default $CONSUL_HTTP_TOKEN_FILE)")
	fs.StringVar(&c.caFile, "ca-file", "", "CA `file` to verify Consul's certificate (default $CONSUL_CACERT)")
	fs.StringVar(&c.clientCert, "client-cert", "", "client certificate `file` (default $CONSUL_CLIENT_CERT)")
	fs.StringVar(&c.clientKey, "client-key", "", "client key `file` (default $CONSUL_CLIENT_KEY)")
	fs.StringVar(&c.namespace, "namespace", "", "Consul Enterprise `namespace` (default $CONSUL_NAMESPACE)")
}

// keyFlags are the flags of every command that names a lock: the connection
// and the key pattern.
type keyFlags struct {
	conn    connFlags
	pattern string
}

// newKeyFlagSet returns the flag set of command name, with the connection
// and key-pattern flags registered, and usage printed before the flags.
func newKeyFlagSet(name, usage string, s stdio) (*flag.FlagSet, *keyFlags) {
	var k keyFlags
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	k.conn.register(fs)
	fs.StringVar(&k.pattern, "key-pattern", consullock.Defaults.KeyPattern, "Consul key of lock KEY, with %s for KEY")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs, &k
}

// client builds the Consul client and checks that the agent answers, so
// that an unreachable agent is reported at once rather than retried.
func (c *connFlags) client(ctx context.Context) (*api.Client, error) {
	client, cfg, err := c.newClient()
	if err != nil {
		return nil, err
	}
	return client, ping(ctx, client, cfg, 5*time.Second)
}

// newClient builds the client from the flags and the environment, without
// talking to the agent yet.
func (c *connFlags) newClient() (*api.Client, *api.Config, error) {
	cfg := tunedConfig()
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Address, c.addr)
	set(&cfg.Token, c.token)
	set(&cfg.TokenFile, c.tokenFile)
	set(&cfg.TLSConfig.CAFile, c.caFile)
	set(&cfg.TLSConfig.CertFile, c.clientCert)
	set(&cfg.TLSConfig.KeyFile, c.clientKey)
	set(&cfg.Namespace, c.namespace)
	// An idle connection counts against the agent's limit of connections
	// per client address as a busy one does: a waiting exec far back in
	// line reads about once a second, and renews its session every few
	// seconds, and need not keep a connection open in between.
	cfg.Transport.IdleConnTimeout = 500 * time.Millisecond
	client, err := api.NewClient(cfg)
	if err != nil { // a bad address, or a token, CA or certificate file that cannot be read
		return nil, nil, usageError{fmt.Errorf("bad Consul client settings: %w", err)}
	}
	return client, cfg, nil
}

// ping checks that the agent of client, built from cfg, answers and knows a
// leader. An agent that refuses the connection fails it at once; one that is
// busy (429, 5xx, no leader yet) is asked again for up to busy (at least
// 5 s): a command that may wait for its lock may wait for a connection too.
func ping(ctx context.Context, client *api.Client, cfg *api.Config, busy time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, max(busy, 5*time.Second))
	defer cancel()
	pause := 20 * time.Millisecond
	var busyErr error // the last answer that said the agent was busy
	for {
		leader, err := client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(pctx))
		noLeader := err == nil && leader == ""
		if noLeader {
			err = errors.New("the agent knows no cluster leader")
		}
		if err == nil {
			return nil
		}
		if pctx.Err() != nil && ctx.Err() == nil && busyErr != nil {
			// The time ran out during a request to an agent that had
			// answered busy: why it was busy says more than the timeout.
			err = busyErr
		}
		// A busy agent (429: too many connections from this host, or its
		// rate limit) or one without a leader for now is asked again.
		passing := strings.Contains(err.Error(), "429") || strings.Contains(err.Error(), "Unexpected response code: 5") || noLeader || dropped(err)
		if passing {
			busyErr = err
		}
		if !passing || sleepCtx(pctx, pause+rand.N(pause)) != nil {
			if strings.Contains(err.Error(), "429") {
				err = fmt.Errorf("%w (the agent serves at most limits.http_max_conns_per_client connections per client address, 200 by default)", err)
			}
			return unavailable(cfg, err)
		}
		pause = min(2*pause, time.Second)
	}
}

// dropped reports a connection that the agent accepted and then closed
// without an answer: what an agent at its limit of connections per client
// address does to a connection kept open from before (it writes a 429 that
// the client never reads as the answer). A refused connection is not.
func dropped(err error) bool {
	var urlErr *url.Error
	return errors.As(err, &urlErr) && !errors.Is(err, syscall.ECONNREFUSED) &&
		(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "readLoopPeekFailLocked"))
}

// sleepCtx sleeps d, or returns ctx's error when it ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unavailable is the one-line report for an agent that cannot be used.
func unavailable(cfg *api.Config, err error) error {
	scheme := cfg.Scheme
	if scheme == "" {
		scheme = "http"
	}
	return exitError{exitUnavailable, fmt.Sprintf(
		"cannot use the Consul agent at %s://%s: %v (set CONSUL_HTTP_ADDR, or start a local agent with `consul-lock dev`)",
		scheme, cfg.Address, err)}
}

// flagGiven reports whether flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// tunedConfig is the client configuration every command starts from:
// consul/api's default, with connections kept alive (its non-pooled
// configuration opens one per request), and the transport set as the
// library runs best on (see the README, under Client setup). It keeps idle as many connections as the
// library may have in flight, so that a busy process reuses them instead
// of leaving sockets in TIME_WAIT. And it asks for no compression: the
// agent gzips every answer above 1,400 bytes, such as a lock's line of
// waiters, and on the loopback or a LAN that costs the agent and the
// client more CPU than the bytes it saves (about a fifth of the agent's
// CPU per contended cycle, measured with 4 processes on one dev agent).
func tunedConfig() *api.Config {
	cfg := api.DefaultConfig()
	cfg.Transport.MaxIdleConnsPerHost = 72
	cfg.Transport.DisableCompression = true
	return cfg
}
