package dedup

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// EntityIDKey and EntitySeqKey are the message metadata keys the entity an event
// belongs to, and its place in that entity's sequence, are read from by default.
const (
	EntityIDKey  = "entity_id"
	EntitySeqKey = "entity_seq"
)

// Entity is the entity an event belongs to, and the event's place in its sequence: the
// producer numbers each entity's events 1, 2, 3, … in the order they happened.
type Entity struct {
	// ID identifies the entity; it passes [ValidateEventID].
	ID string
	// Seq is the event's sequence number within the entity, at least 1.
	Seq int64
}

// GapPolicy says what happens to an event whose sequence number is beyond the next one
// expected (the entity's high-water mark + 1).
type GapPolicy uint8

const (
	// GapApply applies the event and moves the mark to its sequence number: right for
	// events that carry the entity's whole state, where a later event supersedes the
	// ones before it. Events that then arrive at or below the mark are stale.
	GapApply GapPolicy = iota
	// GapStrict makes the event wait for the ones before it: it is handed back
	// without running the handler (deferred, not the message's fault) until the gap
	// closes, or dead-lettered once the gap has been open longer than a bound.
	GapStrict
)

// String returns "apply" or "strict".
func (p GapPolicy) String() string {
	switch p {
	case GapApply:
		return "apply"
	case GapStrict:
		return "strict"
	}
	return "unknown"
}

type entityKey struct{}

type entityValue struct {
	entity Entity
	gap    GapPolicy
}

// WithEntity returns a copy of ctx that asks [Store.Run], of a store that implements
// [Sequencer], to order the event it claims within entity e under policy gap: see
// [Sequencer]. The Dedup middleware sets it when ordering is on.
func WithEntity(ctx context.Context, e Entity, gap GapPolicy) context.Context {
	return context.WithValue(ctx, entityKey{}, entityValue{e, gap})
}

// EntityFrom returns the entity and gap policy [WithEntity] put in ctx.
func EntityFrom(ctx context.Context) (Entity, GapPolicy, bool) {
	v, ok := ctx.Value(entityKey{}).(entityValue)
	return v.entity, v.gap, ok
}

// Sequencer is implemented by stores that keep events of one entity in order. Both of
// idem's stores implement it. Implementations must be safe for concurrent use, also
// by many processes sharing one database.
//
// When the ctx given to [Store.Run] carries an entity ([WithEntity]), Run keeps a
// high-water mark per (consumer, entity ID): the highest sequence number applied,
// 0 before the first. Once the event's claim is new, Run locks the entity's mark row
// in the claim's transaction, so that two events of one entity are decided one after
// the other, never both against the same mark, and then:
//
//   - an event at or below the mark does not run fn: Run rolls back and returns
//     claimed == false with a [*StaleEventError];
//   - under [GapStrict], an event beyond mark + 1 does not run fn either: Run rolls
//     back, records durably (in a short transaction of its own) when the entity's
//     gap was first seen, unless it was recorded before, and returns claimed == false
//     with a [*GapError];
//   - otherwise Run calls fn, and commits the claim, fn's writes and the mark moved
//     to the event's sequence number together (and clears the entity's gap).
//
// A duplicate is reported as a duplicate before the mark is looked at.
type Sequencer interface {
	// Mark returns the high-water mark of entityID for consumer: 0 when no event of
	// it was applied.
	Mark(ctx context.Context, consumer, entityID string) (int64, error)
}

// EntityFunc extracts the entity and sequence number of an event from its message. It
// returns an error when the message carries no usable ones; the error should report
// Permanent() == true (as [*InvalidEntityError] does). What it returns is checked with
// [ValidateEntity] all the same.
type EntityFunc func(msg *message.Message) (Entity, error)

// EntityFromMetadata returns an EntityFunc that reads the entity ID from metadata key
// idKey and the sequence number, in decimal, from seqKey, and validates them with
// [ValidateEntity]. Empty keys mean [EntityIDKey] and [EntitySeqKey].
func EntityFromMetadata(idKey, seqKey string) EntityFunc {
	if idKey == "" {
		idKey = EntityIDKey
	}
	if seqKey == "" {
		seqKey = EntitySeqKey
	}
	return func(msg *message.Message) (Entity, error) {
		id, raw := msg.Metadata.Get(idKey), msg.Metadata.Get(seqKey)
		if err := ValidateEventID(id, DefaultMaxIDLength); err != nil {
			var ie *InvalidEventIDError
			errors.As(err, &ie)
			return Entity{}, &InvalidEntityError{Field: "entity ID (metadata " + idKey + ")", Value: ie.ID, Reason: ie.Reason}
		}
		seq, err := strconv.ParseInt(strings.TrimSpace(raw), 10, 64)
		if err != nil || seq < 1 || strings.TrimSpace(raw) != raw {
			return Entity{}, invalidSeq("metadata "+seqKey, raw)
		}
		return Entity{ID: id, Seq: seq}, nil
	}
}

// ValidateEntity checks that e can order events: an ID that passes [ValidateEventID]
// with [DefaultMaxIDLength], and a sequence number of at least 1.
func ValidateEntity(e Entity) error {
	if err := ValidateEventID(e.ID, DefaultMaxIDLength); err != nil {
		var ie *InvalidEventIDError
		errors.As(err, &ie)
		return &InvalidEntityError{Field: "entity ID", Value: ie.ID, Reason: ie.Reason}
	}
	if e.Seq < 1 {
		return invalidSeq("sequence number", strconv.FormatInt(e.Seq, 10))
	}
	return nil
}

func invalidSeq(field, raw string) error {
	shown := raw
	if len(shown) > 64 {
		shown = shown[:64]
	}
	return &InvalidEntityError{Field: "entity " + field, Value: fmt.Sprintf("%q", shown), Reason: "it is not a positive decimal integer"}
}

// ErrInvalidEntity is the sentinel that every [*InvalidEntityError] matches with
// errors.Is.
var ErrInvalidEntity = errors.New("dedup: invalid entity")

// InvalidEntityError reports an entity ID or sequence number that cannot order events.
// It is a permanent error: redelivering the same message cannot fix it.
type InvalidEntityError struct {
	// Field names what is wrong: the entity ID or its sequence number, and where it
	// was read from.
	Field string
	// Value is the offending value, quoted and cut to 64 bytes, safe to log.
	Value string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidEntityError) Error() string {
	return fmt.Sprintf("dedup: invalid %s %s: %s; set metadata %q and %q (a positive integer) on the producer side or configure an EntityFunc",
		e.Field, e.Value, e.Reason, EntityIDKey, EntitySeqKey)
}

// Is reports whether target is [ErrInvalidEntity].
func (e *InvalidEntityError) Is(target error) bool { return target == ErrInvalidEntity }

// Permanent reports true: an invalid entity is never retried.
func (e *InvalidEntityError) Permanent() bool { return true }

// ErrStaleEvent is the sentinel that every [*StaleEventError] matches with errors.Is.
var ErrStaleEvent = errors.New("dedup: stale event")

// StaleEventError reports an event at or below its entity's high-water mark: a later
// event of the entity was applied already, so this one is skipped.
type StaleEventError struct {
	Key    Key
	Entity Entity
	// Mark is the entity's high-water mark the event was compared with.
	Mark int64
}

func (e *StaleEventError) Error() string {
	return fmt.Sprintf("dedup: stale event %s: sequence %d of entity %q, which is at %d already", e.Key, e.Entity.Seq, e.Entity.ID, e.Mark)
}

// Is reports whether target is [ErrStaleEvent].
func (e *StaleEventError) Is(target error) bool { return target == ErrStaleEvent }

// ErrGap is the sentinel that every [*GapError] matches with errors.Is.
var ErrGap = errors.New("dedup: gap in entity sequence")

// GapError reports an event that, under [GapStrict], waits for earlier events of its
// entity. It is not the message's fault: Infrastructure() reports true, so that the
// event is handed back without spending its attempts.
type GapError struct {
	Key    Key
	Entity Entity
	// Mark is the entity's high-water mark: events Mark+1 … Entity.Seq-1 are missing.
	Mark int64
	// Open is how long the entity's gap has been open, measured on the store's clock
	// from when it was first seen.
	Open time.Duration
}

func (e *GapError) Error() string {
	return fmt.Sprintf("dedup: event %s waits for earlier events: sequence %d of entity %q, which is at %d (gap open for %s)",
		e.Key, e.Entity.Seq, e.Entity.ID, e.Mark, e.Open.Round(time.Millisecond))
}

// Is reports whether target is [ErrGap].
func (e *GapError) Is(target error) bool { return target == ErrGap }

// Infrastructure reports true: waiting for earlier events is not the message's fault.
func (e *GapError) Infrastructure() bool { return true }
