package main

import (
	"fmt"
	"io"
	"time"

	"github.com/consullock/consullock"
)

// verbose is exec -v: the lock's events, one line each, on stderr.
type verbose struct{ w io.Writer }

func (v verbose) Acquired(e consullock.AcquireEvent) {
	if e.Err != nil {
		fmt.Fprintf(v.w, "consul-lock: %s not acquired after %v (%d attempts)\n", e.Key, round(e.Wait), e.Attempts)
		return
	}
	fmt.Fprintf(v.w, "consul-lock: acquired %s, fencing token %d, after waiting %v (%d attempts)\n", e.Key, e.Token, round(e.Wait), e.Attempts)
}

func (v verbose) Contended(e consullock.ContendEvent) {
	fmt.Fprintf(v.w, "consul-lock: %s is held by session %s; waiting\n", e.Key, e.Holder)
}

func (v verbose) Released(e consullock.ReleaseEvent) {
	fmt.Fprintf(v.w, "consul-lock: released %s (token %d) after holding it %v\n", e.Key, e.Token, round(e.Held))
}

func (v verbose) RenewFailed(e consullock.RenewEvent) {
	fmt.Fprintf(v.w, "consul-lock: renewing session %s failed, retrying: %v\n", e.Session, e.Err)
}

func (v verbose) Lost(e consullock.LostEvent) {
	fmt.Fprintf(v.w, "consul-lock: lost %s (token %d) after holding it %v: %v\n", e.Key, e.Token, round(e.Held), e.Cause)
}

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
