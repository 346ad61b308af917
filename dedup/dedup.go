package dedup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// MetadataKey is the message metadata key the event ID is read from by default.
const MetadataKey = "event_id"

// DefaultMaxIDLength is the longest event ID, in bytes, that [ValidateEventID] accepts
// by default.
const DefaultMaxIDLength = 200

// Key identifies one event for one consumer: the unit that is processed at most once.
type Key struct {
	// Consumer names the dedup scope. It must be stable across deploys, and two
	// different handlers must never share it.
	Consumer string
	// EventID identifies the event, the same on every delivery of it.
	EventID string
}

// String returns "consumer/event_id", for logs.
func (k Key) String() string { return k.Consumer + "/" + k.EventID }

// Store claims keys inside the transaction that carries a handler's writes, and counts
// failed attempts durably. Implementations must be safe for concurrent use.
type Store interface {
	// Run claims key in a new transaction. When the key was not claimed before, Run
	// calls fn with a context that carries that transaction, and commits the claim
	// together with fn's writes if fn returns nil, or rolls both back if it returns an
	// error; claimed is then true. When the key was already claimed by a committed
	// transaction, Run does not call fn and returns claimed == false: a duplicate.
	//
	// Run returns fn's error unchanged, and wraps its own failures (begin, claim,
	// commit) with the store's name. A commit whose outcome is unknown is reported
	// as an error: the caller must treat the event as not processed and let a later
	// delivery find out.
	//
	// When ctx carries a payload hash ([WithPayloadHash]), a store that keeps hashes
	// stores it with the claim, and reports a duplicate whose hash differs from the
	// kept one by returning claimed == false with a [*ConflictingDuplicateError]; the
	// duplicate is skipped all the same. A store that keeps no hashes ignores it.
	Run(ctx context.Context, key Key, fn func(ctx context.Context) error) (claimed bool, err error)

	// RecordFailure counts one failed attempt of key in its own short transaction,
	// keeping the first and last failure times (database clock) and cause, and
	// returns the number of failed attempts recorded for key so far, counting this one.
	RecordFailure(ctx context.Context, key Key, cause string) (attempts int, err error)
}

// KeyFunc extracts the event ID from a message. It returns an error when the message
// carries no usable ID; the error should report Permanent() == true (as
// [*InvalidEventIDError] does) unless a later delivery could carry a valid one. What
// it returns is checked with [ValidateEventID] and [DefaultMaxIDLength] all the same,
// so that every key can be stored.
type KeyFunc func(msg *message.Message) (string, error)

// FromMetadata returns a KeyFunc that reads the event ID from metadata key and
// validates it with [ValidateEventID] and [DefaultMaxIDLength].
func FromMetadata(key string) KeyFunc {
	return func(msg *message.Message) (string, error) {
		id := msg.Metadata.Get(key)
		if err := ValidateEventID(id, DefaultMaxIDLength); err != nil {
			if id == "" && key != MetadataKey {
				err.(*InvalidEventIDError).Reason = "metadata key " + key + " is missing or empty"
			}
			return "", err
		}
		return id, nil
	}
}

// FromUUID returns a KeyFunc that uses the transport's message UUID as the event ID.
// Choose it only when the UUID is set by the producer and survives redelivery on your
// transport: some transports generate a new UUID per delivery, and then nothing is
// deduplicated.
func FromUUID() KeyFunc {
	return func(msg *message.Message) (string, error) {
		if err := ValidateEventID(msg.UUID, DefaultMaxIDLength); err != nil {
			return "", err
		}
		return msg.UUID, nil
	}
}

// ErrInvalidEventID is the sentinel that every [*InvalidEventIDError] matches with
// errors.Is.
var ErrInvalidEventID = errors.New("dedup: invalid event ID")

// InvalidEventIDError reports an event ID that cannot be used as a dedup key. It is a
// permanent error: redelivering the same message cannot fix it.
type InvalidEventIDError struct {
	// ID is the offending ID, quoted and cut to 64 bytes, safe to log.
	ID string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidEventIDError) Error() string {
	return fmt.Sprintf("dedup: invalid event ID %s: %s; set metadata %q on the producer side or configure a KeyFunc", e.ID, e.Reason, MetadataKey)
}

// Is reports whether target is [ErrInvalidEventID].
func (e *InvalidEventIDError) Is(target error) bool { return target == ErrInvalidEventID }

// Permanent reports true: an invalid event ID is never retried.
func (e *InvalidEventIDError) Permanent() bool { return true }

// ValidateEventID checks that id can be used as a dedup key: not empty nor only white
// space, at most max bytes (max <= 0 means [DefaultMaxIDLength]), valid UTF-8 and free
// of NUL bytes.
func ValidateEventID(id string, max int) error {
	if max <= 0 {
		max = DefaultMaxIDLength
	}
	invalid := func(reason string) error {
		shown := id
		if len(shown) > 64 {
			shown = shown[:64]
		}
		return &InvalidEventIDError{ID: fmt.Sprintf("%q", shown), Reason: reason}
	}
	switch {
	case id == "":
		return invalid("it is empty")
	case strings.TrimSpace(id) == "":
		return invalid("it is only white space")
	case len(id) > max:
		return invalid(fmt.Sprintf("it is %d bytes long, longer than the limit of %d", len(id), max))
	case !utf8.ValidString(id):
		return invalid("it is not valid UTF-8")
	case strings.IndexByte(id, 0) >= 0:
		return invalid("it contains a NUL byte")
	}
	return nil
}

// MaxConsumerLength is the longest consumer name, in bytes, that [ValidateConsumer]
// accepts.
const MaxConsumerLength = 200

// ErrInvalidConsumer is the sentinel that every [*InvalidConsumerError] matches with
// errors.Is.
var ErrInvalidConsumer = errors.New("dedup: invalid consumer name")

// InvalidConsumerError reports a consumer name (a dedup scope, by default the
// Watermill handler name) that no store can key events by.
type InvalidConsumerError struct {
	// Name is the offending name, quoted and cut to 64 bytes, safe to log.
	Name string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidConsumerError) Error() string {
	return fmt.Sprintf("dedup: invalid consumer name %s: %s; a consumer name must be 1 to %d bytes of valid UTF-8, "+
		"not only white space, without NUL or other control characters", e.Name, e.Reason, MaxConsumerLength)
}

// Is reports whether target is [ErrInvalidConsumer].
func (e *InvalidConsumerError) Is(target error) bool { return target == ErrInvalidConsumer }

// Permanent reports true: no delivery can fix the name of the consumer.
func (e *InvalidConsumerError) Permanent() bool { return true }

// ValidateConsumer checks that name can scope dedup keys: 1 to [MaxConsumerLength]
// bytes of valid UTF-8, not only white space, without NUL or other control
// characters (which would also garble logs and the review command's output).
func ValidateConsumer(name string) error {
	invalid := func(reason string) error {
		shown := name
		if len(shown) > 64 {
			shown = shown[:64]
		}
		return &InvalidConsumerError{Name: fmt.Sprintf("%q", shown), Reason: reason}
	}
	switch {
	case name == "":
		return invalid("it is empty")
	case strings.TrimSpace(name) == "":
		return invalid("it is only white space")
	case len(name) > MaxConsumerLength:
		return invalid(fmt.Sprintf("it is %d bytes long", len(name)))
	case !utf8.ValidString(name):
		return invalid("it is not valid UTF-8")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		if strings.IndexByte(name, 0) >= 0 {
			return invalid("it contains a NUL byte")
		}
		return invalid("it contains a control character")
	}
	return nil
}

// DerivedKey returns a stable stand-in event ID for a message that has no valid one:
// a hash of its payload and metadata, so that every redelivery of the same malformed
// message collapses into one dead letter. Metadata that a transport or a producer
// changes from one delivery or publish of the same message to the next is left out
// (see [VolatileMetadataKey]): a RabbitMQ redelivery, which carries
// _watermill_amqp_redelivered and x-delivery-count, or a publish retried with a new
// trace context, hashes to the same key.
func DerivedKey(msg *message.Message) string {
	h := sha256.New()
	keys := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		if !VolatileMetadataKey(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(msg.Metadata[k]), msg.Metadata[k])
	}
	h.Write(msg.Payload)
	return "derived:" + hex.EncodeToString(h.Sum(nil))
}

// volatileKeys are metadata keys that differ between deliveries or publishes of one
// message: delivery counts and redelivery flags of transports, trace context, and the
// publish stamp.
var volatileKeys = []string{
	"x-delivery-count", "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
	"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
	"traceparent", "tracestate", "baggage", "published_at",
}

// VolatileMetadataKey reports whether the metadata key k is one that a transport or a
// producer changes from one delivery or publish of the same message to the next:
// Watermill's own (_watermill…), RabbitMQ's delivery counts and dead-lettering
// history (x-delivery-count, x-death, x-first-death-…, x-last-death-…), the W3C trace
// context (traceparent, tracestate, baggage) and the publish stamp (published_at).
// [DerivedKey] leaves them out.
func VolatileMetadataKey(k string) bool {
	return strings.HasPrefix(k, "_watermill") || slices.Contains(volatileKeys, strings.ToLower(k))
}

// StartRecorder is implemented by stores that support the opt-in crash guard, which
// counts deliveries before the handler runs so that a message that crashes the
// process is recognised without running it again. Implementations must be safe for
// concurrent use.
//
// A start is a crash only when the process that counted it died before the delivery
// ended: deliveries of one event that run at the same time (copies taken by several
// replicas, a redelivery while the first delivery still works) are never crashes of
// each other. Each value of a store counts its starts as one process; a store that
// can tell a process that died from one that runs implements [LiveStartRecorder].
type StartRecorder interface {
	// StartAttempt counts one started delivery of key in its own short transaction,
	// on behalf of this process, and returns 1 plus the number of other processes
	// that started deliveries of key that never finished and that are not running
	// any more: each of them is one crash, however many deliveries it ran. A process
	// of a LiveStartRecorder that still holds its liveness is running; with a plain
	// StartRecorder every other process is taken for dead. The starts of this
	// process are never counted: each of them is running, or ended without its end
	// being recorded. It returns 0, counting nothing, when key was processed.
	StartAttempt(ctx context.Context, key Key) (started int, err error)
	// FinishAttempt records that a delivery of key ended without crashing: it forgets
	// every unfinished start of key, of every process, so that the next delivery
	// counts from 1 again.
	FinishAttempt(ctx context.Context, key Key) error
}

// LiveStartRecorder is a StartRecorder that knows which processes still run, so that
// the deliveries another process is working on are never taken for crashes, however
// many of them there are. The crash guard holds the liveness for the whole of each
// delivery it counts.
type LiveStartRecorder interface {
	StartRecorder
	// HoldLive shows the other processes sharing the store that this one runs, until
	// release is called; holds nest, and release is safe to call more than once.
	// While a hold is taken, the starts of this process are not counted as crashes
	// elsewhere; when the process dies, its holds end with it.
	HoldLive(ctx context.Context) (release func(), err error)
}

// ProducedEventID is the event ID given to the i-th message a handler produced while
// processing key, when the handler set none: derived from key and i, so that every
// attempt, and every redelivery, produces the same IDs, and the consumers downstream
// recognise a message produced twice as a duplicate.
func ProducedEventID(key Key, i int) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s%d:%s%d", len(key.Consumer), key.Consumer, len(key.EventID), key.EventID, i)
	return "produced:" + hex.EncodeToString(h.Sum(nil))[:40]
}
