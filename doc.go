// Package consullock provides distributed locks on HashiCorp Consul, for Go
// services that must keep a critical section from running on two hosts at
// once. It is the Go successor of python-consul-lock.
//
// An EphemeralLock is a single-use lock on one key, for short critical
// sections:
//
//	lock, err := consullock.NewEphemeralLock("billing/invoice-42",
//		consullock.WithClient(client),
//		consullock.WithAcquireTimeout(500*time.Millisecond))
//	if err != nil {
//		return err // a bad name or option, reported before anything reaches Consul
//	}
//	err = lock.Hold(ctx, func(ctx context.Context) error {
//		return chargeInvoice(ctx, 42)
//	})
//	if errors.Is(err, consullock.ErrNotAcquired) {
//		// another holder kept the lock for the whole acquire timeout
//	}
//
// # How it works
//
// Acquiring creates a Consul session whose TTL is the lock's maximum lifespan
// (Config.LockTimeout) and whose invalidation deletes the keys it holds, then
// takes the key in a transaction (a KV lock, as python-consul-lock's PUT
// ?acquire, whose index is the fencing token). A waiter that finds the key
// held joins a line in Consul, and the release hands the key to the first
// in line in one transaction: the waiter learns that it holds the key from
// a blocking query, without a write of its own (see README, "Waiting in
// line"). Releasing destroys the session, which deletes the key in the same
// consensus write when there is no lock delay. A Locker shares one renewed
// session among many locks, for two writes a cycle.
//
// Every lock type stands on one core: a held key is valid while it is
// exactly as the take left it (held by its session, at the take's index),
// and the same code watches it, checks its deadlines, fences and releases
// it, whether it is an EphemeralLock, a Lease, an election's Term or a
// semaphore's slot. The watches of all the locks built on one *api.Client
// (with one ACL token) share at most 8 blocking queries, and the waiters of
// each semaphore one more, within Consul's limit of 200 connections per
// client address.
//
// # Guarantees and assumptions
//
// While a lock is held, Consul lets no other session take its key. The
// guarantee assumes what Consul's own does: a Raft quorum of servers whose
// KV, session and transaction operations are linearizable. consullock's
// sessions carry no health check, only a TTL, so a restarting or
// partitioned agent does not free a lock behind its holder's back.
//
//   - Maximum lifespan: by default the session's TTL is LockTimeout and it is
//     not renewed once the lock is held (a lock that waits for its key renews
//     it, so that it is never older than LockTimeout/2 at the acquire).
//     Consul invalidates the session, which deletes the key, no earlier than
//     LockTimeout after it was created or last renewed (so from
//     LockTimeout/2 after the acquire for a lock that waited long) and, in
//     practice, by twice LockTimeout. With WithRenewal the session is renewed
//     every half TTL and the lock lasts until Release; LockTimeout then bounds
//     how long a dead holder keeps it.
//   - Lost-lock notification: Lost, Err and Hold's context tell the holder
//     when the key was deleted, taken over or written to (within about a
//     round trip), and at the latest
//     at a local deadline, LockTimeout (less up to a second for clock rates)
//     after the session was created or last renewed, before Consul could give
//     the key to anyone else. This assumes the holder's clock does not run
//     slower than the servers' by more than that margin, and that the holder
//     is not paused (GC, SIGSTOP) between its check and its action: fencing
//     tokens close that last gap.
//   - Fencing: Token strictly increases across successive holders of a key.
//     PutFenced and CheckOp make Consul writes conditional on still holding
//     the lock; any other resource can refuse tokens lower than the highest
//     it has seen.
//   - Passing failures (leader elections, HTTP 500 and 429, refused and reset
//     connections) are retried with jittered backoff: during an acquire within
//     its timeout, during a hold within the local deadline.
//
// Keys and values are those of python-consul-lock (locks/ephemeral/NAME, a
// JSON value with "locked_at"), so Go and Python holders of one key exclude
// each other.
package consullock
