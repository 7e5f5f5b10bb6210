// Command txnprobe times, side by side on one agent, the bare requests of
// an uncontended lock cycle: two PUTs (the raw floor), a transaction lock
// with a DELETE ?cas (the least a lock that returns its fencing token can
// send), a PUT ?acquire with a DELETE (no token), and a Locker's cycle. It
// alternates them in rounds of 100 cycles and prints each one's p50 over
// the PUTs'. docs/BENCHMARKS.md quotes it:
//
//	go run ./internal/txnprobe -addr 127.0.0.1:8500
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/consullock/consullock"
	"github.com/hashicorp/consul/api"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8500", "the agent's HTTP address")
	rounds := flag.Int("rounds", 30, "rounds of 100 cycles of each")
	flag.Parse()
	cfg := api.DefaultConfig()
	cfg.Address = *addr
	cfg.Transport.MaxIdleConnsPerHost = 72
	cfg.Transport.DisableCompression = true
	c, _ := api.NewClient(cfg)
	kv := c.KV()
	ctx := context.Background()
	sid, _, err := c.Session().Create(&api.SessionEntry{TTL: "60s", Behavior: "delete", LockDelay: time.Nanosecond}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Session().Destroy(sid, nil)
	lk, err := consullock.NewLocker(consullock.WithClient(c))
	if err != nil {
		log.Fatal(err)
	}
	val := consullock.DefaultValue()
	impls := map[string]func() error{
		"2 PUTs": func() error {
			if _, err := kv.Put(&api.KVPair{Key: "txnprobe/raw", Value: []byte("1")}, nil); err != nil {
				return err
			}
			_, err := kv.Put(&api.KVPair{Key: "txnprobe/raw", Value: []byte("0")}, nil)
			return err
		},
		"txn lock + DELETE cas": func() error {
			ok, r, _, err := kv.Txn(api.KVTxnOps{{Verb: api.KVLock, Key: "txnprobe/txn", Value: val, Session: sid}}, nil)
			if err != nil || !ok {
				return fmt.Errorf("%v %v", err, ok)
			}
			_, _, err = kv.DeleteCAS(&api.KVPair{Key: "txnprobe/txn", ModifyIndex: r.Results[0].ModifyIndex}, nil)
			return err
		},
		"PUT acquire + DELETE": func() error {
			ok, _, err := kv.Acquire(&api.KVPair{Key: "txnprobe/acquire", Value: val, Session: sid}, nil)
			if err != nil || !ok {
				return fmt.Errorf("acquire: %v %v", err, ok)
			}
			_, err = kv.Delete("txnprobe/acquire", nil)
			return err
		},
		"Locker": func() error {
			l, err := lk.Acquire(ctx, "txnprobe")
			if err != nil {
				return err
			}
			return l.Release(ctx)
		},
	}
	names := []string{"2 PUTs", "txn lock + DELETE cas", "PUT acquire + DELETE", "Locker"}
	res := map[string][]time.Duration{}
	for range *rounds {
		for _, n := range names {
			for i := 0; i < 100; i++ {
				t := time.Now()
				if err := impls[n](); err != nil {
					log.Fatalf("%s: %v", n, err)
				}
				res[n] = append(res[n], time.Since(t))
			}
		}
	}
	base := p50(res["2 PUTs"])
	for _, n := range names {
		fmt.Printf("%-22s p50 %v  %.3fx\n", n, p50(res[n]), float64(p50(res[n]))/float64(base))
	}
	if err := lk.Close(ctx); err != nil {
		log.Fatal(err)
	}
	kv.DeleteTree("txnprobe/", nil)
}

func p50(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
