package consullock_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// A linearizability check of lock histories with porcupine: workers record
// every operation on one lock with its start and end on one monotonic clock,
// and the checker looks for an order of them, consistent with real time,
// that a single correct lock could have produced. The model is a lock with
// fencing tokens: an acquire succeeds only on a free lock and gets a token
// above all earlier ones; a fenced write succeeds only while its token's
// hold is in effect; a release ends the hold it names.
//
// What a worker cannot know exactly is recorded loosely rather than left
// out: a hold that was lost, or whose release failed, ends at some unknown
// moment after its acquire began, so it is an "uncertain end" spanning from
// there to when the worker noticed (or for ever, for a failed release).

type lockOp int

const (
	opAcquire lockOp = iota
	opWrite
	opRelease
	opUncertainEnd
)

// lockInput is what a worker asked for; token is the hold's (zero for
// acquire, whose token is its output).
type lockInput struct {
	op    lockOp
	token uint64
}

// lockOutput is what it got: the acquired token, or whether a fenced write
// was applied.
type lockOutput struct {
	token uint64
	ok    bool
}

// lockState is the model's state: the token whose hold is in effect (0 when
// the lock is free) and the highest token handed out.
type lockState struct {
	holder, last uint64
}

var lockModel = porcupine.Model{
	Init: func() any { return lockState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(lockState), input.(lockInput), output.(lockOutput)
		switch in.op {
		case opAcquire:
			return s.holder == 0 && out.token > s.last, lockState{out.token, out.token}
		case opWrite:
			return !out.ok || s.holder == in.token, s
		case opRelease:
			return s.holder == in.token, lockState{0, s.last}
		default: // opUncertainEnd: it ended, or had already
			if s.holder == in.token {
				s.holder = 0
			}
			return true, s
		}
	},
	Hash: func(state any) uint64 { s := state.(lockState); return s.holder*31 + s.last },
	DescribeOperation: func(input, output any) string {
		in, out := input.(lockInput), output.(lockOutput)
		switch in.op {
		case opAcquire:
			return fmt.Sprintf("acquire -> %d", out.token)
		case opWrite:
			return fmt.Sprintf("write(%d) -> %v", in.token, out.ok)
		case opRelease:
			return fmt.Sprintf("release(%d)", in.token)
		default:
			return fmt.Sprintf("lost or failed release(%d)", in.token)
		}
	},
	DescribeState: func(state any) string {
		s := state.(lockState)
		return fmt.Sprintf("holder %d, last token %d", s.holder, s.last)
	},
}

// forever is the end of an operation whose outcome is never learnt.
const forever = math.MaxInt64

// lockHistory records the operations of the workers of one test.
type lockHistory struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func newLockHistory() *lockHistory { return &lockHistory{start: time.Now()} }

// now is a point on the history's clock.
func (h *lockHistory) now() int64 { return int64(time.Since(h.start)) }

// add records an operation of worker that began at call and ended at ret.
func (h *lockHistory) add(worker int, in lockInput, out lockOutput, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: worker, Input: in, Output: out, Call: call, Return: ret})
}

// check fails t unless the history is linearizable. A checker that runs out
// of time fails the test too: an unknown result proves nothing.
func (h *lockHistory) check(t *testing.T, timeout time.Duration) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	start := time.Now()
	result, info := porcupine.CheckOperationsVerbose(lockModel, h.ops, timeout)
	switch result {
	case porcupine.Ok:
		t.Logf("porcupine: %d operations linearizable (checked in %v)", len(h.ops), time.Since(start).Round(time.Millisecond))
	case porcupine.Unknown:
		t.Fatalf("porcupine could not decide on %d operations within %v: no proof of safety", len(h.ops), timeout)
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("consullock-%s-history.html", lockName(t, "")[:len(lockName(t, ""))-1]))
		if err := porcupine.VisualizePath(lockModel, info, path); err != nil {
			t.Logf("visualizing the history: %v", err)
		}
		t.Fatalf("the lock history of %d operations is not linearizable: two holders overlapped, or a token went back (see %s)", len(h.ops), path)
	}
}

// The model must be able to fail: histories that a broken lock would
// produce are refused, and a correct one accepted.
func TestLockModelRefusesBrokenHistories(t *testing.T) {
	acq := func(w int, tok uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: w, Input: lockInput{op: opAcquire}, Output: lockOutput{token: tok}, Call: call, Return: ret}
	}
	rel := func(w int, tok uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: w, Input: lockInput{op: opRelease, token: tok}, Output: lockOutput{}, Call: call, Return: ret}
	}
	write := func(w int, tok uint64, ok bool, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: w, Input: lockInput{op: opWrite, token: tok}, Output: lockOutput{ok: ok}, Call: call, Return: ret}
	}
	lost := func(w int, tok uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: w, Input: lockInput{op: opUncertainEnd, token: tok}, Output: lockOutput{}, Call: call, Return: ret}
	}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"handoff", []porcupine.Operation{acq(0, 5, 0, 1), write(0, 5, true, 2, 3), acq(1, 9, 2, 6), rel(0, 5, 4, 5), write(1, 9, true, 7, 8)}, porcupine.Ok},
		{"overlapping holders", []porcupine.Operation{acq(0, 5, 0, 1), acq(1, 9, 2, 3), rel(0, 5, 4, 5), rel(1, 9, 6, 7)}, porcupine.Illegal},
		{"token went back", []porcupine.Operation{acq(0, 9, 0, 1), rel(0, 9, 2, 3), acq(1, 5, 4, 5)}, porcupine.Illegal},
		{"write after a successor took over", []porcupine.Operation{acq(0, 5, 0, 1), lost(0, 5, 0, 20), acq(1, 9, 2, 3), write(0, 5, true, 4, 5)}, porcupine.Illegal},
		{"loss lets a successor in", []porcupine.Operation{acq(0, 5, 0, 1), lost(0, 5, 0, 20), acq(1, 9, 2, 3), write(0, 5, false, 4, 5), write(1, 9, true, 6, 7)}, porcupine.Ok},
		{"failed release", []porcupine.Operation{acq(0, 5, 0, 1), lost(0, 5, 2, forever), acq(1, 9, 4, 5)}, porcupine.Ok},
	} {
		if got := porcupine.CheckOperationsTimeout(lockModel, tc.ops, 10*time.Second); got != tc.want {
			t.Errorf("%s: checker says %v, want %v", tc.name, got, tc.want)
		}
	}
}
