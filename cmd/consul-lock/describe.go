package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/consullock/consullock"
)

// lockInfo is what status and list report of one lock or semaphore.
type lockInfo struct {
	Key      string `json:"key"`
	Kind     string `json:"kind"` // "lock" or "semaphore"
	Held     bool   `json:"held"`
	Session  string `json:"session,omitempty"`
	Node     string `json:"node,omitempty"`
	Token    uint64 `json:"token,omitempty"`
	Host     string `json:"host,omitempty"`
	PID      int    `json:"pid,omitempty"`
	LockedAt string `json:"locked_at,omitempty"`
	Value    string `json:"value,omitempty"` // when it is not a holder record
	TTL      string `json:"ttl,omitempty"`

	// A semaphore's limit and its held slots, in slot order.
	Limit   int        `json:"limit,omitempty"`
	Holders []lockInfo `json:"holders,omitempty"`

	// The waiters, in arrival order.
	Waiting int          `json:"waiting"`
	Queue   []waiterInfo `json:"queue,omitempty"`

	At string `json:"at,omitempty"` // when status -watch saw this state
}

// waiterInfo is one waiter in a lock's queue: its contender key, the session
// that holds it, and the value it wrote (a holder record since when it
// waits; older waiters may have written nothing).
type waiterInfo struct {
	Contender    string `json:"contender"`
	Session      string `json:"session"`
	Host         string `json:"host,omitempty"`
	PID          int    `json:"pid,omitempty"`
	WaitingSince string `json:"waiting_since,omitempty"`
	Value        string `json:"value,omitempty"` // when it is not a holder record
}

const (
	kindLock      = "lock"
	kindSemaphore = "semaphore"
)

// queueMark is what the library puts between a lock's key and its waiters'
// contender keys: KEY.queue/<session>-<8 digits>.
const queueMark = ".queue/"

// slotKey matches a semaphore's slot keys, KEY/slot-N.
var slotKey = regexp.MustCompile(`^(.+)/slot-([0-9]+)$`)

// part is what one Consul key is to the lock it belongs to.
type part uint8

const (
	partLock part = iota
	partSlot
	partContender
)

// ownerOf names the lock or semaphore that a key belongs to, and what the
// key is to it. A slot is told from a lock named ".../slot-N" by its flags,
// which hold the semaphore's limit.
func ownerOf(p *api.KVPair) (string, part) {
	if i := strings.LastIndex(p.Key, queueMark); i > 0 {
		return p.Key[:i], partContender
	}
	if m := slotKey.FindStringSubmatch(p.Key); m != nil && p.Flags >= 1 && p.Flags <= consullock.MaxSemaphoreLimit {
		return m[1], partSlot
	}
	return p.Key, partLock
}

// group sorts pairs by the lock they belong to, keeping the locks in key
// order.
func group(pairs api.KVPairs) (keys []string, of map[string]api.KVPairs) {
	of = map[string]api.KVPairs{}
	for _, p := range pairs {
		k, _ := ownerOf(p)
		if of[k] == nil {
			keys = append(keys, k)
		}
		of[k] = append(of[k], p)
	}
	slices.Sort(keys)
	return keys, of
}

// build makes the lockInfo of key from the pairs that belong to it, without
// asking Consul about sessions (see addSessions). A semaphore's limit is
// read from its held slots, so a semaphore that nobody holds shows as free.
func build(key string, pairs api.KVPairs) lockInfo {
	info := lockInfo{Key: key, Kind: kindLock}
	var contenders api.KVPairs
	for _, p := range pairs {
		switch _, what := ownerOf(p); {
		case p.Session == "":
			// A free key, or a contender key whose waiter is gone.
		case what == partContender:
			contenders = append(contenders, p)
		case what == partSlot:
			info.Kind, info.Limit = kindSemaphore, int(p.Flags)
			info.Holders = append(info.Holders, holderInfo(p))
		default:
			info = merge(info, holderInfo(p))
		}
	}
	if info.Kind == kindSemaphore {
		info.Held = len(info.Holders) > 0
		slices.SortFunc(info.Holders, func(a, b lockInfo) int { return slotNumber(a.Key) - slotNumber(b.Key) })
	}
	info.Queue = queueOf(contenders)
	info.Waiting = len(info.Queue)
	return info
}

// merge puts the holder of the lock's own key into info.
func merge(info, h lockInfo) lockInfo {
	h.Key, h.Kind, h.Limit, h.Holders = info.Key, info.Kind, info.Limit, info.Holders
	return h
}

func slotNumber(key string) int {
	n, _ := strconv.Atoi(key[strings.LastIndex(key, "-")+1:])
	return n
}

// holderInfo is what a held key says of its holder.
func holderInfo(p *api.KVPair) lockInfo {
	info := lockInfo{Key: p.Key, Kind: kindLock, Held: true, Session: p.Session, Token: p.ModifyIndex}
	info.Host, info.PID, info.LockedAt, info.Value = parseValue(p.Value)
	return info
}

// parseValue reads a holder record, or returns the value quoted when it is
// something else. An empty value is neither.
func parseValue(v []byte) (host string, pid int, at, raw string) {
	if len(v) == 0 {
		return "", 0, "", ""
	}
	if h, err := consullock.ParseHolder(v); err == nil {
		return h.Host, h.PID, h.LockedAt, ""
	}
	return "", 0, "", fmt.Sprintf("%.200q", v)
}

// queueOf is the waiters of live contender keys, in the order they were
// created, which is the order the queue serves them in.
func queueOf(contenders api.KVPairs) []waiterInfo {
	slices.SortFunc(contenders, func(a, b *api.KVPair) int {
		return int(min(max(int64(a.CreateIndex)-int64(b.CreateIndex), -1), 1))
	})
	queue := make([]waiterInfo, 0, len(contenders))
	for _, p := range contenders {
		w := waiterInfo{Contender: p.Key, Session: p.Session}
		w.Host, w.PID, w.WaitingSince, w.Value = parseValue(p.Value)
		queue = append(queue, w)
	}
	return queue
}

// addSessions fills in the node and TTL of the holders' sessions.
func addSessions(ctx context.Context, c *api.Client, info *lockInfo) error {
	if info.Session != "" {
		if err := addSession(ctx, c, info); err != nil {
			return err
		}
	}
	for i := range info.Holders {
		if err := addSession(ctx, c, &info.Holders[i]); err != nil {
			return err
		}
	}
	return nil
}

func addSession(ctx context.Context, c *api.Client, info *lockInfo) error {
	s, _, err := c.Session().Info(info.Session, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if s != nil {
		info.Node, info.TTL = s.Node, s.TTL
	}
	return nil
}

// lockPairs keeps the pairs that belong to key itself: a prefix listing of
// key also returns other keys that start with it.
func lockPairs(key string, pairs api.KVPairs) api.KVPairs {
	return slices.DeleteFunc(slices.Clone(pairs), func(p *api.KVPair) bool {
		k, _ := ownerOf(p)
		return k != key
	})
}
