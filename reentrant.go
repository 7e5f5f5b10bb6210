package consullock

import "context"

// Reentrancy, opt-in for a Locker (WithReentrancy): a goroutine that holds a
// lease and passes the context that carries it down its call chain may
// acquire the same name again; the lease counts its holds and gives the lock
// back only when the count returns to zero. Another session, or code that
// does not have the context, is still refused. Go has no goroutine identity,
// so the context is what says "the same holder".

type leaseKey struct{}

// ContextWithLease returns a context that carries lease, so that a
// reentrant Locker's Acquire given it (or a context derived from it) for the
// same name counts one more hold instead of waiting. Hold does this for its
// function.
func ContextWithLease(ctx context.Context, lease *Lease) context.Context {
	held, _ := ctx.Value(leaseKey{}).([]*Lease)
	return context.WithValue(ctx, leaseKey{}, append(held[:len(held):len(held)], lease))
}

// reenter counts one more hold on a lease that ctx carries for key, if the
// Locker is reentrant and the lease is still held.
func (lk *Locker) reenter(ctx context.Context, key string) *Lease {
	if !lk.s.reentrant {
		return nil
	}
	held, _ := ctx.Value(leaseKey{}).([]*Lease)
	for _, l := range held {
		if l.lk == lk && l.h.key == key && l.h.reenter() {
			return l
		}
	}
	return nil
}
