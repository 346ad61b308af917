package dlq

import (
	"context"
	"errors"
	"time"
)

// Reason says why a message was dead-lettered.
type Reason string

const (
	// ReasonPermanent: the handler returned a permanent error (retry.Permanent, a decode
	// error, failed validation); it was not retried.
	ReasonPermanent Reason = "permanent"
	// ReasonExhausted: the message failed on every one of its allowed attempts.
	ReasonExhausted Reason = "exhausted"
	// ReasonMalformed: the message carries no usable event ID, and then it is stored
	// under a derived key so that its redeliveries collapse into one dead letter; or,
	// with ordering on, no usable entity ID or sequence number.
	ReasonMalformed Reason = "malformed"
	// ReasonCrashLooped: the message's deliveries killed the process again and again
	// (the crash guard's count of processes that died with a delivery of it started
	// and not finished), as when the handler crashes it.
	ReasonCrashLooped Reason = "crash-looped"
	// ReasonGap: with ordering under the strict gap policy, the message waited for
	// earlier events of its entity longer than the gap timeout.
	ReasonGap Reason = "gap"
)

// Status is where a dead letter stands in review.
type Status string

const (
	// StatusPending: waiting for an operator. A pending dead letter is an alerting condition.
	StatusPending Status = "pending"
	// StatusReplayed: republished to its topic for another try.
	StatusReplayed Status = "replayed"
	// StatusDiscarded: dropped on purpose, with a reason.
	StatusDiscarded Status = "discarded"
	// StatusResolved: dealt with by other means.
	StatusResolved Status = "resolved"
)

// DeadLetter is a message that could not be processed, with everything an operator
// needs to understand and replay it. Payload and Metadata are the original message's,
// byte for byte.
type DeadLetter struct {
	// ID is the store's identifier, set by the store.
	ID int64
	// Consumer and EventID identify the event: a store keeps one dead letter per pair.
	Consumer string
	EventID  string
	// Topic is the topic the message was consumed from; Handler the Watermill handler name.
	Topic   string
	Handler string
	// MessageUUID is the transport's message UUID of the last delivery.
	MessageUUID string
	// EventType and EventVersion come from the metadata keys event_type and
	// event_version, when the producer set them.
	EventType    string
	EventVersion string
	// Payload and Metadata are the original message's.
	Payload  []byte
	Metadata map[string]string
	// Reason says why the message was dead-lettered; Error is the last error, scrubbed
	// of secrets and truncated.
	Reason Reason
	Error  string
	// Fingerprint groups dead letters that failed for the same cause.
	Fingerprint string
	// Attempts is how many attempts failed before the message was dead-lettered.
	Attempts int
	// CorrelationID, TraceID and SpanID tie the dead letter to logs and traces.
	CorrelationID string
	TraceID       string
	SpanID        string
	// Host is the name of the machine that dead-lettered the message.
	Host string

	// History is the latest failed attempts, newest first, as the store recorded them
	// (bounded). Kept by the store.
	History []Failure

	// Status, Count and the times are kept by the store.
	Status Status
	// Count is how many times this event was dead-lettered (more than one after a
	// replay that failed again).
	Count          int
	FirstFailedAt  time.Time
	LastFailedAt   time.Time
	DeadLetteredAt time.Time
}

// Failure is one failed attempt in a dead letter's history.
type Failure struct {
	At    time.Time `json:"at"`
	Error string    `json:"error"`
}

// Store keeps dead letters durably. Implementations must be safe for concurrent use.
type Store interface {
	// Put stores d, one row per (Consumer, EventID): when a dead letter for the same
	// event exists, Put updates it (last error, attempts, count, status back to
	// pending) instead of adding another. created reports whether the row is new.
	// The first and last failure times come from the store's record of failed
	// attempts when it has one, otherwise from the database clock.
	Put(ctx context.Context, d *DeadLetter) (created bool, err error)
}

// ErrNotFound is returned when a dead letter does not exist.
var ErrNotFound = errors.New("dlq: dead letter not found")
