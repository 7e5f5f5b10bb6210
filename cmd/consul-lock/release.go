package main

import (
	"bufio"
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

func runRelease(ctx context.Context, args []string, s stdio) error {
	fs, k := newKeyFlagSet("consul-lock release", "Usage: consul-lock release [flags] KEY\n\nForce-releases lock KEY, whose holder is gone, by destroying the holder's\nsession. A holder that is still alive loses the lock, and consul-lock exec\nstops its command. Says what it is about to do and asks first, unless -yes.\n\nExamples:\n  consul-lock release nightly-report\n  consul-lock release -yes nightly-report\n\nFlags:\n", s)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	if err := parseFlags(fs, args, s, 1, 1); err != nil {
		return err
	}
	c, info, err := lookup(ctx, k, fs.Arg(0))
	if err != nil {
		return err
	}
	key := info.Key
	if info.Kind == kindSemaphore {
		return exitError{1, fmt.Sprintf("%s is a semaphore (%d of %d held): release one holder by its slot's key, e.g. consul-lock release -key-pattern %%s %s", key, len(info.Holders), info.Limit, info.Holders[0].Key)}
	}
	if !info.Held {
		fmt.Fprintf(s.out, "%s is not held: nothing to release\n", key)
		return nil
	}
	fmt.Fprintf(s.out, "About to release %s, held by %s, by destroying session %s (node %s).\n", key, holderOf(info), info.Session, info.Node)
	if !*yes && !confirm(s) {
		return exitError{1, "not released"}
	}
	if _, err := c.Session().Destroy(info.Session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return exitError{exitUnavailable, err.Error()}
	}
	fmt.Fprintf(s.out, "Released %s.\n", key)
	return nil
}

func confirm(s stdio) bool {
	fmt.Fprint(s.out, "Proceed? [y/N] ")
	line, _ := bufio.NewReader(s.in).ReadString('\n')
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes"
}
