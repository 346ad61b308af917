// Package dedup defines how idem recognises an event it has already processed.
//
// A consumer under at-least-once delivery sees the same event more than once. dedup
// names each event by a [Key], the pair (consumer, event ID), and a [Store] claims
// that key in the same database transaction as the handler's own writes: the claim and
// the effects commit together or not at all, so an event's effect is applied once.
//
// # Event identity
//
// The event ID comes from the message metadata key [MetadataKey] ("event_id") by
// default, or from a [KeyFunc] of the user's choosing. It never comes silently from the
// transport's message UUID, which some transports regenerate on redelivery: [FromUUID]
// is an explicit opt-in. [ValidateEventID] rejects empty, over-long, non-UTF-8 and
// NUL-containing IDs; such an error reports Permanent() == true, so the message is
// dead-lettered at once under a [DerivedKey] instead of being retried.
//
// # Outcomes
//
// Every delivery ends in one [Outcome] of a closed vocabulary: processed, duplicate,
// retried, dead-lettered, deferred or stale.
//
// # Ordering
//
// An event may name its entity and its sequence number within it ([Entity], read by an
// [EntityFunc], metadata [EntityIDKey] and [EntitySeqKey] by default). A store that
// implements [Sequencer] keeps each entity's high-water mark and moves it in the
// claim's transaction: an event at or below it is stale, and under [GapStrict] an
// event beyond the next one expected waits ([GapError]).
//
// # Stores
//
// The package imports no database driver. postgres.Store and sqlite.Store implement
// [Store]; package deduptest holds the conformance suite every store passes.
package dedup
