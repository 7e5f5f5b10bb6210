package consullock

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Waiting for any change under a key prefix (a semaphore's slots). A
// blocking query per waiter would cost a connection each, and an agent
// serves at most 200 per client address: the waiters of one client for one
// prefix share one blocking list instead, which runs while anyone waits,
// and lingers a little after: the waiter that it woke usually waits again
// at once, and a query cancelled in flight loses its connection.

// listWatch is the shared list of one prefix: its newest answer, and a
// channel closed when a newer one comes.
type listWatch struct {
	at   listAt
	stop context.CancelFunc

	mu      sync.Mutex
	waiters int
	idle    *time.Timer // stops the list once it has lingered unneeded
	index   uint64      // the newest answer's index, 0 before the first
	pairs   api.KVPairs // the newest answer
	err     error       // why the list failed for good
	failing error       // why the last try failed, if it did: a passing failure
	newer   chan struct{}
}

// listAt names a shared list: a prefix, read by one client with one token.
type listAt struct {
	c      conn
	prefix string
}

var listWatches = struct {
	sync.Mutex
	m map[listAt]*listWatch
}{m: map[listAt]*listWatch{}}

// awaitList returns the list of prefix once it is newer than index, the
// index of an earlier list of it, with its index. It returns errDeadline
// when the deadline passes first, and ctx's cause when ctx ends.
func awaitList(ctx context.Context, c conn, prefix string, index uint64, deadline time.Time) (api.KVPairs, uint64, error) {
	w := joinList(listAt{c, prefix})
	defer w.leave()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for woke := false; ; woke = true {
		w.mu.Lock()
		pairs, at, err, newer := w.pairs, w.index, w.err, w.newer
		w.mu.Unlock()
		switch {
		case err != nil:
			return nil, 0, err
		case at > index, woke && at != index && at != 0:
			// Newer, or a change seen since the wait began whose index
			// went back (Consul restored a snapshot): start from it.
			return pairs, at, nil
		}
		select {
		case <-newer:
		case <-ctx.Done():
			return nil, 0, context.Cause(ctx)
		case <-timer.C:
			if err := w.lastFailure(); err != nil {
				return nil, 0, consulError(err) // Consul kept failing: not a wait for slots
			}
			return nil, 0, errDeadline
		}
	}
}

// joinList counts a waiter in the shared list at, and starts the list if
// nobody waited yet. Its first answer comes at once, without blocking: a
// waiter that joins may have read the prefix before the others did, and
// must not miss what changed in between.
func joinList(at listAt) *listWatch {
	listWatches.Lock()
	defer listWatches.Unlock()
	w := listWatches.m[at]
	if w == nil {
		ctx, stop := context.WithCancel(context.Background())
		w = &listWatch{at: at, stop: stop, newer: make(chan struct{})}
		listWatches.m[at] = w
		go w.run(ctx)
	}
	w.mu.Lock()
	w.waiters++
	if w.idle != nil {
		w.idle.Stop()
		w.idle = nil
	}
	w.mu.Unlock()
	return w
}

// leave counts a waiter out; the list stops watchLinger after the last
// one left, unless another joined meanwhile, or at once if it is failing:
// no answer is coming to linger for.
func (w *listWatch) leave() {
	w.mu.Lock()
	w.waiters--
	idle, failing := w.waiters == 0, w.failing != nil
	if idle && !failing {
		w.idle = time.AfterFunc(watchLinger, w.stopIfUnneeded)
	}
	w.mu.Unlock()
	if idle && failing {
		w.stopIfUnneeded()
	}
}

func (w *listWatch) stopIfUnneeded() {
	listWatches.Lock()
	defer listWatches.Unlock()
	w.mu.Lock()
	unneeded := w.waiters == 0
	w.mu.Unlock()
	if unneeded {
		w.forget()
	}
}

// forget stops the list and takes it out of the table; listWatches is held.
func (w *listWatch) forget() {
	w.stop()
	if listWatches.m[w.at] == w {
		delete(listWatches.m, w.at)
	}
}

// run lists the prefix, each time blocking from the last answer's index,
// until stopped. Passing failures are retried; another ends the list, and
// every waiter gets it.
func (w *listWatch) run(ctx context.Context) {
	c := w.at.c
	var index uint64
	for {
		var pairs api.KVPairs
		var meta *api.QueryMeta
		err := retry(ctx, deadlineAfter(math.MaxInt64), func() (err error) {
			pairs, meta, err = c.c.KV().List(w.at.prefix, c.query(ctx, api.QueryOptions{WaitIndex: index, WaitTime: watchWait}))
			w.mu.Lock()
			w.failing = err
			unneeded := w.waiters == 0
			w.mu.Unlock()
			if err != nil && unneeded {
				w.stopIfUnneeded() // lingering, and failing: no answer to wait for
			}
			return err
		})
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			listWatches.Lock()
			w.forget()
			listWatches.Unlock()
			w.publish(nil, 0, consulError(err))
			return
		}
		// Every answer, even one at its wait time with the index unchanged:
		// a waiter whose index is past the list's after Consul's went back
		// (a snapshot restore) starts over from it.
		w.publish(pairs, meta.LastIndex, nil)
		index = nextIndex(index, meta.LastIndex)
	}
}

// lastFailure is why the list's last try failed, or nil.
func (w *listWatch) lastFailure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failing
}

// publish makes an answer the newest and wakes the waiters.
func (w *listWatch) publish(pairs api.KVPairs, index uint64, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pairs, w.index, w.err = pairs, index, err
	close(w.newer)
	w.newer = make(chan struct{})
}
