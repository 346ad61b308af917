package dedup

// Outcome is how a delivery ended. The vocabulary is closed: every delivery ends in
// exactly one of these.
type Outcome uint8

const (
	// Processed: the handler ran, its effects and the claim committed, the message was acked.
	Processed Outcome = iota + 1
	// Duplicate: the event was processed before; the handler did not run and the message was acked.
	Duplicate
	// Retried: the attempt failed and the message was handed back for another delivery.
	Retried
	// DeadLettered: the message could not be processed; its dead letter committed and it was acked.
	DeadLettered
	// Deferred: processing could not happen for reasons that are not the message's fault
	// (shutdown, database outage, an event waiting for earlier ones of its entity); the
	// message was handed back without spending its budget, or, with ordering's
	// quarantine, parked in the store behind its entity's dead letter and acked.
	Deferred
	// Stale: a later event of the same entity was applied already (see [Sequencer]);
	// the handler did not run and the message was acked.
	Stale
)

// String returns the outcome's name as used in logs, spans and metrics.
func (o Outcome) String() string {
	switch o {
	case Processed:
		return "processed"
	case Duplicate:
		return "duplicate"
	case Retried:
		return "retried"
	case DeadLettered:
		return "dead-lettered"
	case Deferred:
		return "deferred"
	case Stale:
		return "stale"
	}
	return "unknown"
}
