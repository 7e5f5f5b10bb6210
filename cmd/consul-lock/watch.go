package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// watchRetry is how long status -watch waits after a failed query before it
// asks again: a leader election or a restarting agent should not end a watch.
const watchRetry = time.Second

// watchStatus prints the state of lock name, then again each time its holder
// or its queue changes, until ctx ends. It waits on blocking queries on the
// lock's keys, so a change is printed as soon as Consul applies it, and an
// idle lock costs one open query.
func watchStatus(ctx context.Context, k *keyFlags, name string, asJSON bool, s stdio) error {
	key, err := keyOf(k.pattern, name)
	if err != nil {
		return err
	}
	c, err := k.conn.client(ctx)
	if err != nil {
		return err
	}
	var index uint64
	last := ""
	for ctx.Err() == nil {
		info, next, err := read(ctx, c, key, index)
		if err != nil {
			if ctx.Err() == nil {
				fmt.Fprintf(s.errOut, "consul-lock status: %v; asking again in %v\n", err, watchRetry)
				sleepCtx(ctx, watchRetry)
			}
			index = 0
			continue
		}
		if sig := signature(info); sig != last {
			last = sig
			printChange(s, info, asJSON)
		}
		index = nextWait(index, next)
	}
	return nil
}

// nextWait is the index to wait on after a query at index answered next:
// Consul's index may go backwards (a snapshot restore), and then the watch
// starts over rather than block forever.
func nextWait(index, next uint64) uint64 {
	if next < index || next == 0 {
		return 0
	}
	return next
}

// signature is what makes two states different to a reader: who holds
// (session and token) and who waits, in which order. A wake-up for a key
// that merely shares the prefix changes none of it and prints nothing.
func signature(info lockInfo) string {
	type holder struct {
		Key, Session string
		Token        uint64
	}
	sig := struct {
		Held    []holder
		Waiters []string
	}{}
	for _, h := range append([]lockInfo{info}, info.Holders...) {
		if h.Session != "" {
			sig.Held = append(sig.Held, holder{h.Key, h.Session, h.Token})
		}
	}
	for _, w := range info.Queue {
		sig.Waiters = append(sig.Waiters, w.Contender)
	}
	b, _ := json.Marshal(sig)
	return string(b)
}

// printChange prints one state: a timestamped block, or one JSON object a
// line so that a script can read the changes as they come.
func printChange(s stdio, info lockInfo, asJSON bool) {
	info.At = time.Now().Format(time.RFC3339Nano)
	if asJSON {
		b, _ := json.Marshal(info)
		fmt.Fprintf(s.out, "%s\n", b)
		return
	}
	fmt.Fprintf(s.out, "--- %s\n", info.At)
	printInfo(s.out, info)
}
