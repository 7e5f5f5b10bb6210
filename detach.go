package consullock

import (
	"context"
	"errors"
)

// A request that a cancelled context cuts off may still reach Consul and be
// applied after its caller cleaned up: a session created, or a key taken,
// that nobody knows of. The writes whose effect would outlive their caller
// therefore run with a context of their own, so that their outcome is always
// learnt. The caller still returns as soon as its context ends, and a write
// it abandoned is undone in the background once its answer says it applied.

// errWriteTimedOut reports a write that Consul did not answer within
// cleanupTimeout, while its caller's context lives on: it may have been
// applied, and it is worth trying again.
var errWriteTimedOut = errors.New("no answer from Consul to the write in time")

// late is the outcome of a write that its caller abandoned, once Consul
// answers it.
type late[T any] struct {
	v   T
	err error
}

// writeDetached runs write with a context that ctx's cancellation does not
// reach (bounded by cleanupTimeout), and returns its result, or ctx's cause
// as soon as ctx ends first. In that case the returned channel delivers the
// write's outcome once it is known, so that the caller's clean-up can wait
// for it and undo a write that succeeded. A ctx already ended sends nothing.
func writeDetached[T any](ctx context.Context, write func(context.Context) (T, error)) (T, <-chan late[T], error) {
	var zero T
	if ctx.Err() != nil {
		return zero, nil, context.Cause(ctx)
	}
	if ctx.Done() == nil { // a context that never ends: nothing to detach from
		wctx, cancel := detached(ctx)
		defer cancel()
		v, err := write(wctx)
		if err != nil && wctx.Err() != nil {
			err = errWriteTimedOut
		}
		return v, nil, err
	}
	done := make(chan late[T], 1)
	wctx, cancel := detached(ctx)
	go func() {
		defer cancel()
		v, err := write(wctx)
		if err != nil && wctx.Err() != nil {
			err = errWriteTimedOut
		}
		done <- late[T]{v, err}
	}()
	select {
	case o := <-done:
		return o.v, nil, o.err
	case <-ctx.Done():
		return zero, done, context.Cause(ctx)
	}
}

// detached returns a context that outlives ctx's cancellation by at most
// cleanupTimeout, for giving back what a cancelled call had taken.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}
