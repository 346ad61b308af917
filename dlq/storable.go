package dlq

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultMaxFieldLength is the length, in bytes, to which [Storable] cuts the short
// text fields of a dead letter (topic, handler, message UUID, event type and version,
// correlation ID, host, fingerprint) when given no maximum. The metadata keeps the
// original values whole.
const DefaultMaxFieldLength = 1024

// Storable returns s as text that every store can hold in a text column: invalid
// UTF-8 and NUL bytes (which PostgreSQL's text type refuses) are each replaced by
// U+FFFD, and the result is cut to at most max bytes on a UTF-8 boundary (max <= 0
// means DefaultMaxFieldLength), so that an indexed column never meets a value too
// large for its index. A value that needs no change is returned as it is.
//
// The dead-letter middleware passes every text field it copies from a message or an
// error through Storable (or [ScrubError], which does the same); a message's payload
// and metadata are stored byte for byte instead, as bytes and with
// [EncodeMetadata]. Storable is safe for concurrent use.
func Storable(s string, max int) string {
	if max <= 0 {
		max = DefaultMaxFieldLength
	}
	s = validText(s)
	if len(s) <= max {
		return s
	}
	return s[:runeCut(s, max)]
}

// validText returns s with each invalid UTF-8 sequence and each NUL byte replaced by
// U+FFFD: text every store can hold.
func validText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	return s
}

// runeCut returns the largest n <= max at which s can be cut without splitting a
// UTF-8 sequence; max must be less than len(s).
func runeCut(s string, max int) int {
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return max
}

// IsStorable reports whether s is text every store can hold, as [Storable] makes
// it: valid UTF-8 without NUL bytes. It does not look at the length.
func IsStorable(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// ReducedKey is the metadata key of a dead letter kept in reduced form (see [Reduce]):
// its value gives the size and SHA-256 of the payload that could not be kept.
const ReducedKey = "idem_reduced"

// reducedIDLength bounds each identifier a reduced dead letter keeps.
const reducedIDLength = 256

// Reduce returns the reduced form of d, for a store that refused d for its data (a
// value its columns cannot hold): what identifies the event and the failure — the
// consumer, event ID, topic, handler, message UUID, correlation, trace and span IDs,
// host, reason, attempts and fingerprint, each made [Storable] and cut to 256 bytes —
// and an error text that says why it was reduced, with the last error. The payload and
// metadata are not kept: the metadata holds only [ReducedKey], with the payload's size
// and SHA-256 and the number of metadata entries. A reduced dead letter cannot be
// replayed ([DeadLetter.Reduced]); it is still reviewed, alerted on and resolved or
// discarded like any other.
func Reduce(d *DeadLetter, refusal error) *DeadLetter {
	sum := sha256.Sum256(d.Payload)
	id := func(s string) string { return Storable(s, reducedIDLength) }
	summary := fmt.Sprintf("payload %d bytes, sha256 %x; metadata %d entries", len(d.Payload), sum, len(d.Metadata))
	return &DeadLetter{
		Consumer:      id(d.Consumer),
		EventID:       id(d.EventID),
		Topic:         id(d.Topic),
		Handler:       id(d.Handler),
		MessageUUID:   id(d.MessageUUID),
		CorrelationID: id(d.CorrelationID),
		TraceID:       id(d.TraceID),
		SpanID:        id(d.SpanID),
		Host:          id(d.Host),
		Reason:        d.Reason,
		Attempts:      d.Attempts,
		Fingerprint:   id(d.Fingerprint),
		Payload:       []byte{},
		Metadata:      map[string]string{ReducedKey: summary},
		Error: ScrubError(fmt.Sprintf("kept in reduced form: the store refused the dead letter's data (%v); %s; the last error was: %s",
			refusal, summary, d.Error), 0),
	}
}

// Reduced reports whether d was kept in reduced form by [Reduce]: it has no payload
// nor metadata to replay.
func (d *DeadLetter) Reduced() bool {
	_, ok := d.Metadata[ReducedKey]
	return ok
}
