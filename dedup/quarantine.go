package dedup

import (
	"context"
	"errors"
	"fmt"
)

// Quarantiner is implemented by stores that quarantine an entity whose event was
// dead-lettered, under [GapStrict]: its later events are parked in the store and acked
// instead of waiting on the gap the dead letter leaves, so that the partition flows on
// for other entities. Both of idem's stores implement it. Implementations must be safe
// for concurrent use, also by many processes sharing one database.
//
// When the ctx given to [Store.Run] carries a message to park ([WithParking]) and the
// event's entity is quarantined behind a dead letter of a lower sequence number, Run
// does not call fn: it parks the message, keeping no claim, in the claim's
// transaction, which holds the entity's mark row, and returns claimed == false with a
// [*QuarantinedError]. An event at or below the mark stays stale; one between the mark
// and the dead letter's sequence number is decided as without quarantine.
//
// The dead letter's review releases the parked events (see dlq.Reviewer and the store's
// documentation): replaying or resolving it, or discarding it with the parked events
// released, moves them, in sequence order, to the delayed retries ([Parker]), due at
// once, from where the consumer's redeliverer publishes them again with their own
// event IDs; discarding it with the parked events discarded drops them. Resolving or
// discarding it moves the entity's mark past it, since its event will not come again.
type Quarantiner interface {
	Sequencer
	// Quarantine blocks the entity e of the dead-lettered event key: from now on the
	// entity's events above e.Seq are parked, until the dead letter is reviewed. An
	// entity blocked at a lower sequence number stays so; an event at or below the
	// mark blocks nothing.
	Quarantine(ctx context.Context, key Key, e Entity) error
}

type parkingKey struct{}

// WithParking returns a copy of ctx that asks [Store.Run], of a store that implements
// [Quarantiner], to park p when its entity is quarantined (see [Quarantiner]); p.Delay
// and p.Due are not used. The Dedup middleware sets it when quarantine is on.
func WithParking(ctx context.Context, p Parked) context.Context {
	return context.WithValue(ctx, parkingKey{}, p)
}

// ParkingFrom returns the message [WithParking] put in ctx.
func ParkingFrom(ctx context.Context) (Parked, bool) {
	p, ok := ctx.Value(parkingKey{}).(Parked)
	return p, ok
}

// ErrQuarantined is the sentinel that every [*QuarantinedError] matches with errors.Is.
var ErrQuarantined = errors.New("dedup: entity quarantined")

// QuarantinedError reports an event parked behind its entity's dead letter: its
// message is kept in the store, and acked, until the dead letter is reviewed.
type QuarantinedError struct {
	Key    Key
	Entity Entity
	// BlockedBy is the event ID of the dead letter the entity waits on, and
	// BlockedSeq its sequence number.
	BlockedBy  string
	BlockedSeq int64
}

func (e *QuarantinedError) Error() string {
	return fmt.Sprintf("dedup: event %s parked: entity %q is quarantined behind dead-lettered event %q (sequence %d)",
		e.Key, e.Entity.ID, e.BlockedBy, e.BlockedSeq)
}

// Is reports whether target is [ErrQuarantined].
func (e *QuarantinedError) Is(target error) bool { return target == ErrQuarantined }
