package middleware

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
)

// DefaultGapTimeout is how long, under dedup.GapStrict, an entity's gap may stay open
// before the event waiting on it is dead-lettered with reason gap.
const DefaultGapTimeout = 10 * time.Minute

// OrderingConfig turns on ordering of the events of one entity (see dedup.Sequencer):
// each event names its entity and its sequence number within it; an event at or
// below the entity's high-water mark is acked without running the handler (outcome
// stale), and under dedup.GapStrict an event beyond the next one expected waits for
// the events before it. Ordering needs a store that implements dedup.Sequencer, and
// does not combine with batching. Its zero value is off.
type OrderingConfig struct {
	// Enabled turns ordering on. Defaults to false.
	Enabled bool
	// EntityFunc extracts each event's entity and sequence number. A message without
	// usable ones is dead-lettered as malformed on its first delivery. Defaults to
	// dedup.EntityFromMetadata(dedup.EntityIDKey, dedup.EntitySeqKey).
	EntityFunc dedup.EntityFunc
	// Gap is what happens to an event beyond the entity's mark + 1. Defaults to
	// dedup.GapApply: it is applied and the mark moves to it.
	Gap dedup.GapPolicy
	// GapTimeout bounds, under dedup.GapStrict, how long an entity's gap may stay
	// open, measured on the store's clock from when it was first seen: an event that
	// still waits on it after that is dead-lettered with reason gap (dlq.ReasonGap),
	// and so are the entity's later events while the gap stays open. Until then the
	// event is handed back, deferred, without spending its attempts. Defaults to
	// DefaultGapTimeout; -1 waits forever.
	GapTimeout time.Duration
	// Quarantine, under dedup.GapStrict, parks the later events of an entity whose
	// event was dead-lettered in the store, and acks them (outcome deferred), instead
	// of letting them wait on the gap it leaves: the partition flows on for other
	// entities. Reviewing the dead letter releases them (see dedup.Quarantiner): they
	// go to the delayed retries, so the consumer must run them (see
	// consumer.Config.DelayedRetry). The store must implement dedup.Quarantiner, and
	// the message must carry its topic in its context (a router's handler does).
	// Defaults to false.
	Quarantine bool
}

// Validate checks c, naming the field at fault.
func (c OrderingConfig) Validate() error {
	switch {
	case c.Gap > dedup.GapStrict:
		return fmt.Errorf("Gap must be dedup.GapApply or dedup.GapStrict, got %d", c.Gap)
	case c.GapTimeout < -1:
		return fmt.Errorf("GapTimeout must be positive, 0 (the default, %s) or -1 (wait forever), got %s", DefaultGapTimeout, c.GapTimeout)
	case c.Quarantine && c.Gap != dedup.GapStrict:
		return fmt.Errorf("Quarantine needs Gap dedup.GapStrict: under dedup.GapApply later events never wait")
	case !c.Enabled && (c.EntityFunc != nil || c.Gap != dedup.GapApply || c.GapTimeout != 0 || c.Quarantine):
		return fmt.Errorf("ordering is configured but Enabled is false: set Enabled to turn it on")
	}
	return nil
}

func (c OrderingConfig) entityFunc() dedup.EntityFunc {
	if c.EntityFunc == nil {
		return dedup.EntityFromMetadata(dedup.EntityIDKey, dedup.EntitySeqKey)
	}
	return c.EntityFunc
}

func (c OrderingConfig) gapTimeout() time.Duration {
	if c.GapTimeout == 0 {
		return DefaultGapTimeout
	}
	return c.GapTimeout
}

// entityOf extracts and validates the entity of msg.
func entityOf(msg *message.Message, f dedup.EntityFunc) (dedup.Entity, error) {
	e, err := f(msg)
	if err != nil {
		return dedup.Entity{}, err
	}
	if err := dedup.ValidateEntity(e); err != nil {
		return dedup.Entity{}, err
	}
	return e, nil
}
