package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"
)

const listUsage = `Usage: consul-lock list [flags] [PREFIX]

Lists the locks and semaphores whose KEY starts with PREFIX that are held
now or waited for, with their holder and the number of waiters. A
semaphore's slots and the waiters' queue keys are shown as part of their
lock, never on their own.

Examples:
  consul-lock list
  consul-lock list -json billing/

Flags:
`

func runList(ctx context.Context, args []string, s stdio) error {
	fs, k := newKeyFlagSet("consul-lock list", listUsage, s)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, s, 0, 1); err != nil {
		return err
	}
	base, _, _ := strings.Cut(k.pattern, "%s")
	c, err := k.conn.client(ctx)
	if err != nil {
		return err
	}
	infos, err := listLocks(ctx, c, base+fs.Arg(0))
	if err != nil {
		return exitError{exitUnavailable, err.Error()}
	}
	if *asJSON {
		printJSON(s.out, infos)
		return nil
	}
	tw := tabwriter.NewWriter(s.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tHOLDER\tSESSION\tTOKEN\tLOCKED AT\tWAITING")
	for _, i := range infos {
		if i.Kind == kindSemaphore {
			fmt.Fprintf(tw, "%s\t%d of %d held\t-\t-\t-\t%d\n", i.Key, len(i.Holders), i.Limit, i.Waiting)
			continue
		}
		holder, session := holderOf(i), i.Session
		if !i.Held {
			holder, session = "free", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\n", i.Key, holder, session, i.Token, orDash(i.LockedAt), i.Waiting)
	}
	return tw.Flush()
}

// listLocks describes every lock under prefix that is held or waited for.
func listLocks(ctx context.Context, c *api.Client, prefix string) ([]lockInfo, error) {
	pairs, _, err := c.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	keys, of := group(pairs)
	infos := []lockInfo{}
	for _, key := range keys {
		info := build(key, of[key])
		if !info.Held && info.Waiting == 0 {
			continue
		}
		if err := addSessions(ctx, c, &info); err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}
