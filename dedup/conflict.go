package dedup

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

type payloadHashKey struct{}

// WithPayloadHash returns a copy of ctx that asks [Store.Run] to keep hash on the
// processed row of the event it claims, and to compare it with the one kept when the
// event is a duplicate (see [ConflictingDuplicateError]). The Dedup middleware sets it
// to [HashPayload] of each message's payload.
func WithPayloadHash(ctx context.Context, hash []byte) context.Context {
	return context.WithValue(ctx, payloadHashKey{}, hash)
}

// PayloadHash returns the hash [WithPayloadHash] put in ctx, or nil.
func PayloadHash(ctx context.Context) []byte {
	h, _ := ctx.Value(payloadHashKey{}).([]byte)
	return h
}

// HashPayload returns the SHA-256 of payload: the hash idem keeps of a processed event.
func HashPayload(payload []byte) []byte {
	sum := sha256.Sum256(payload)
	return sum[:]
}

// ErrConflictingDuplicate is the sentinel that every [*ConflictingDuplicateError]
// matches with errors.Is.
var ErrConflictingDuplicate = errors.New("dedup: conflicting duplicate")

// ConflictingDuplicateError reports a duplicate whose payload differs from the payload
// of the processed event with the same ID: a producer that reused an event ID for
// other content, or changed an event between two publishes of it. The duplicate is
// skipped all the same; the error is there to be counted and logged.
type ConflictingDuplicateError struct {
	Key Key
	// Kept is the hash kept with the processed event; Got the duplicate's.
	Kept, Got []byte
}

func (e *ConflictingDuplicateError) Error() string {
	return fmt.Sprintf("dedup: conflicting duplicate of %s: payload hash %x, the processed event's was %x; "+
		"the producer reused the event ID for different content", e.Key, e.Got, e.Kept)
}

// Is reports whether target is [ErrConflictingDuplicate].
func (e *ConflictingDuplicateError) Is(target error) bool { return target == ErrConflictingDuplicate }
