package dedup

import "context"

// BatchRunner is implemented by stores that run the attempts of many events in one
// transaction: group commit, one COMMIT for the lot instead of one per event. Both of
// idem's stores implement it; the Dedup middleware uses it when batching is on.
// Implementations must be safe for concurrent use.
type BatchRunner interface {
	// RunBatch runs the attempts of items, of one consumer or several, in one
	// transaction. It
	// claims every item's key, runs the Fn of each item whose claim is new, one at a
	// time and in the order given, each isolated from the others (a savepoint of its
	// own): an item whose Fn fails rolls back alone, its claim with it, while the
	// others commit. It commits once, and sets each item's Claimed and Err as Run
	// would have returned them:
	//
	//   - a duplicate (claimed by a committed transaction, or by an earlier item of
	//     the same batch) is not run: Claimed false, Err nil, or a
	//     [*ConflictingDuplicateError] when its payload hash (WithPayloadHash on its
	//     Ctx) differs from the one kept;
	//   - an item whose Fn failed: Claimed true, Err the Fn's error, unchanged;
	//   - when beginning, claiming or committing fails, every item that was not
	//     already failed by its own Fn gets the store's error, wrapped as Run wraps
	//     it: none of their effects committed (or, for a COMMIT whose outcome is
	//     unknown, may have: a later delivery finds out);
	//   - an item whose Ctx ended before its turn is not run: Claimed false, Err the
	//     context's error.
	//
	// Fn receives its item's Ctx with the transaction in it, as Run hands it; the
	// items' Fns run on the batch's one connection, one after the other. RunBatch
	// returns once every item is settled.
	RunBatch(ctx context.Context, items []*BatchItem)
}

// BatchItem is one event's attempt in a [BatchRunner] batch.
type BatchItem struct {
	// Ctx is the delivery's context: Fn runs with it (and the transaction), and its
	// payload hash, if any, is kept with the claim.
	Ctx context.Context
	// Key is the event's key.
	Key Key
	// Fn is the attempt, as for Store.Run.
	Fn func(ctx context.Context) error

	// Claimed and Err are set by RunBatch.
	Claimed bool
	Err     error
}
