// Package dlq defines idem's dead letters: messages that could not be processed,
// stored durably with why, where, when and how many attempts, for an operator to
// review, replay or discard.
//
// # Guarantees
//
// A message is acknowledged as dead-lettered only after its [DeadLetter] committed in a
// [Store]; if the store fails, the message is handed back to the broker instead, and
// nothing is lost. A store keeps one dead letter per (consumer, event ID): a second
// dead-lettering of the same event updates it.
//
// # Review
//
// Dead letters start [StatusPending]. A pending dead letter is an alerting condition,
// not a landfill: review moves it to replayed, discarded (with a reason) or resolved.
//
// The package imports no database driver; postgres.Store and sqlite.Store implement
// [Store], and package dlqtest holds the conformance suite every store passes.
package dlq
