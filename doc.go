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
// takes the key with a KV PUT ?acquire. A waiter watches the key with Consul
// blocking queries and retries the moment it is freed, rather than polling.
// Releasing destroys the session, which deletes the key in the same consensus
// write when there is no lock delay.
//
// # Guarantees and assumptions
//
// While a lock is held, Consul lets no other session take its key, until
// Release or until Consul invalidates the session: that happens after
// LockTimeout and no later than twice LockTimeout, and the holder is not told
// (a lost-lock notification is planned). A holder must therefore finish its
// work within LockTimeout. The guarantee rests on Consul's own: the servers
// keep a Raft quorum, and sessions are checked against the agent's serfHealth.
//
// Keys and values are those of python-consul-lock (locks/ephemeral/NAME, a
// JSON value with "locked_at"), so Go and Python holders of one key exclude
// each other.
package consullock
