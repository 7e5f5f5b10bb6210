package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock/internal/keyname"
)

const statusUsage = `Usage: consul-lock status [flags] KEY

Shows whether lock KEY is held, and by whom (holder host and pid, session,
fencing token, since when), and who waits for it, in the order they will be
served (host, pid, session, waiting since). A semaphore (exec -n) shows as
"N of LIMIT held" with its holders. Exits 0 when held, 1 when free.

With -watch, prints the state again each time the holder or the queue
changes, as Consul reports it on blocking queries, until interrupted.

Examples:
  consul-lock status nightly-report
  consul-lock status -watch -json nightly-report

Flags:
`

func runStatus(ctx context.Context, args []string, s stdio) error {
	fs, k := newKeyFlagSet("consul-lock status", statusUsage, s)
	asJSON := fs.Bool("json", false, "print JSON (with -watch, one object a line)")
	watch := fs.Bool("watch", false, "print each change of holder and queue until interrupted")
	if err := parseFlags(fs, args, s, 1, 1); err != nil {
		return err
	}
	if *watch {
		return watchStatus(ctx, k, fs.Arg(0), *asJSON, s)
	}
	_, info, err := lookup(ctx, k, fs.Arg(0))
	if err != nil {
		return err
	}
	if *asJSON {
		printJSON(s.out, info)
	} else {
		printInfo(s.out, info)
	}
	if !info.Held {
		return exitError{1, ""}
	}
	return nil
}

// lookup connects and reads what Consul knows of lock name.
func lookup(ctx context.Context, k *keyFlags, name string) (*api.Client, lockInfo, error) {
	key, err := keyOf(k.pattern, name)
	if err != nil {
		return nil, lockInfo{}, err
	}
	c, err := k.conn.client(ctx)
	if err != nil {
		return nil, lockInfo{}, err
	}
	info, _, err := read(ctx, c, key, 0)
	if err != nil {
		return nil, lockInfo{}, exitError{exitUnavailable, err.Error()}
	}
	return c, info, nil
}

// read lists the keys of lock key (its own, its semaphore slots, its
// waiters' contender keys) and describes it. With index not 0 it is a
// blocking query that returns once something under key changed (or after
// Consul's wait time); it returns the index to wait on next.
func read(ctx context.Context, c *api.Client, key string, index uint64) (lockInfo, uint64, error) {
	pairs, meta, err := c.KV().List(key, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
	if err != nil {
		return lockInfo{}, 0, err
	}
	info := describeKey(key, pairs)
	return info, meta.LastIndex, addSessions(ctx, c, &info)
}

// describeKey is build on the pairs of key; a semaphore's slot named on
// its own is described as the lock it is.
func describeKey(key string, pairs api.KVPairs) lockInfo {
	for _, p := range pairs {
		if _, what := ownerOf(p); p.Key == key && what == partSlot && p.Session != "" {
			return holderInfo(p)
		}
	}
	return build(key, lockPairs(key, pairs))
}

// keyOf is the Consul key of lock name, by the library's own rules.
func keyOf(pattern, name string) (string, error) {
	if err := keyname.CheckPattern(pattern); err != nil {
		return "", usageError{err}
	}
	key, err := keyname.Format(pattern, name)
	if err != nil {
		return "", usageError{fmt.Errorf("invalid key: %w", err)}
	}
	return key, nil
}

func holderOf(i lockInfo) string {
	switch {
	case i.Host != "" || i.PID != 0:
		return fmt.Sprintf("%s pid %d", i.Host, i.PID)
	case i.Value != "":
		return "value " + i.Value
	}
	return "node " + i.Node
}

func waiterOf(w waiterInfo) string {
	switch {
	case w.Host != "" || w.PID != 0:
		return fmt.Sprintf("%s pid %d", w.Host, w.PID)
	case w.Value != "":
		return "value " + w.Value
	}
	return "(no value)"
}

func printInfo(w io.Writer, i lockInfo) {
	switch {
	case i.Kind == kindSemaphore:
		fmt.Fprintf(w, "%s: %d of %d held\n", i.Key, len(i.Holders), i.Limit)
		for _, h := range i.Holders {
			fmt.Fprintf(w, "  %s: %s, session %s (node %s, TTL %s), token %d, since %s\n",
				h.Key[strings.LastIndex(h.Key, "/")+1:], holderOf(h), h.Session, h.Node, h.TTL, h.Token, orDash(h.LockedAt))
		}
	case !i.Held:
		fmt.Fprintf(w, "%s: free\n", i.Key)
	default:
		fmt.Fprintf(w, "%s: held\n  holder:  %s\n  session: %s (node %s, TTL %s)\n  token:   %d\n", i.Key, holderOf(i), i.Session, i.Node, i.TTL, i.Token)
		if i.LockedAt != "" {
			fmt.Fprintf(w, "  since:   %s\n", i.LockedAt)
		}
	}
	printQueue(w, i)
}

// printQueue lists the waiters in the order they will be served.
func printQueue(w io.Writer, i lockInfo) {
	if len(i.Queue) == 0 {
		if i.Held {
			fmt.Fprintln(w, "  queue:   none waiting")
		}
		return
	}
	fmt.Fprintf(w, "  queue:   %d waiting\n", len(i.Queue))
	for n, q := range i.Queue {
		fmt.Fprintf(w, "    %d. %s, session %s, waiting since %s\n", n+1, waiterOf(q), q.Session, orDash(q.WaitingSince))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
