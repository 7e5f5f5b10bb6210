package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
	"github.com/consullock/consullock/internal/keyname"
)

// lockInfo is what status and list report of one lock.
type lockInfo struct {
	Key      string `json:"key"`
	Held     bool   `json:"held"`
	Session  string `json:"session,omitempty"`
	Node     string `json:"node,omitempty"`
	Token    uint64 `json:"token,omitempty"`
	Host     string `json:"host,omitempty"`
	PID      int    `json:"pid,omitempty"`
	LockedAt string `json:"locked_at,omitempty"`
	Value    string `json:"value,omitempty"` // when it is not a holder record
	TTL      string `json:"ttl,omitempty"`
}

// describe reads what Consul knows of a lock's key and holder session.
func describe(ctx context.Context, c *api.Client, pair *api.KVPair, key string) (lockInfo, error) {
	info := lockInfo{Key: key}
	if pair == nil || pair.Session == "" {
		return info, nil
	}
	info.Held, info.Session, info.Token = true, pair.Session, pair.ModifyIndex
	if h, err := consullock.ParseHolder(pair.Value); err == nil {
		info.Host, info.PID, info.LockedAt = h.Host, h.PID, h.LockedAt
	} else {
		info.Value = fmt.Sprintf("%.200q", pair.Value)
	}
	s, _, err := c.Session().Info(pair.Session, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return info, err
	}
	if s != nil {
		info.Node, info.TTL = s.Node, s.TTL
	}
	return info, nil
}

func runStatus(ctx context.Context, args []string, s stdio) error {
	fs, k := newKeyFlagSet("consul-lock status", "Usage: consul-lock status [flags] KEY\n\nShows whether lock KEY is held, and by whom: holder host and pid, session,\nfencing token, and since when. Exits 0 when held, 1 when free.\n\nExample:\n  consul-lock status nightly-report\n\nFlags:\n", s)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, s, 1, 1); err != nil {
		return err
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

func runList(ctx context.Context, args []string, s stdio) error {
	fs, k := newKeyFlagSet("consul-lock list", "Usage: consul-lock list [flags] [PREFIX]\n\nLists the locks held now whose KEY starts with PREFIX.\n\nExamples:\n  consul-lock list\n  consul-lock list -json billing/\n\nFlags:\n", s)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, s, 0, 1); err != nil {
		return err
	}
	base, _, _ := strings.Cut(k.pattern, "%s")
	c, err := k.conn.client(ctx)
	if err != nil {
		return err
	}
	pairs, _, err := c.KV().List(base+fs.Arg(0), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return exitError{exitUnavailable, err.Error()}
	}
	infos := []lockInfo{}
	for _, p := range pairs {
		if p.Session == "" {
			continue
		}
		info, err := describe(ctx, c, p, p.Key)
		if err != nil {
			return exitError{exitUnavailable, err.Error()}
		}
		infos = append(infos, info)
	}
	if *asJSON {
		printJSON(s.out, infos)
		return nil
	}
	tw := tabwriter.NewWriter(s.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tHOLDER\tSESSION\tTOKEN\tLOCKED AT")
	for _, i := range infos {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", i.Key, holderOf(i), i.Session, i.Token, i.LockedAt)
	}
	return tw.Flush()
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
	pair, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, lockInfo{}, exitError{exitUnavailable, err.Error()}
	}
	info, err := describe(ctx, c, pair, key)
	if err != nil {
		return nil, lockInfo{}, exitError{exitUnavailable, err.Error()}
	}
	return c, info, nil
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

func printInfo(w io.Writer, i lockInfo) {
	if !i.Held {
		fmt.Fprintf(w, "%s: free\n", i.Key)
		return
	}
	fmt.Fprintf(w, "%s: held\n  holder:  %s\n  session: %s (node %s, TTL %s)\n  token:   %d\n", i.Key, holderOf(i), i.Session, i.Node, i.TTL, i.Token)
	if i.LockedAt != "" {
		fmt.Fprintf(w, "  since:   %s\n", i.LockedAt)
	}
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
