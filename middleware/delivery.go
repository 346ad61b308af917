package middleware

import (
	"context"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// delivery is what idem's middleware learn about one delivery of a message, shared
// between them through the message context.
type delivery struct {
	// msg is the message this state belongs to: a context handed on to another message
	// (gochannel's PreserveContext, a handler that gives its produced messages its own
	// context) must not make that message share it.
	msg    *message.Message
	keyed  bool
	key    dedup.Key
	keyErr error
	// failures is the durable count of failed attempts of the event, as the dedup
	// store last reported it, or the in-process count when no store records them.
	failures int
	// recorded says a dedup store counts failures durably.
	recorded bool
	// attempt is the 1-based attempt within this delivery.
	attempt int
	outcome dedup.Outcome
	// conflict says the delivery was a duplicate whose payload differs from the
	// processed event's (Dedup).
	conflict bool
	// payloadHash is the SHA-256 of the payload, computed once by Dedup.
	payloadHash []byte
	// nextWait is the backoff Retry computed before the next attempt when it handed
	// the message back instead of waiting (0 when it did not).
	nextWait time.Duration
	// parkedFor is how long the message was parked for a delayed retry (DeadLetter).
	parkedFor time.Duration
	// entity is the event's entity, when ordered says Dedup ordered it.
	entity  dedup.Entity
	ordered bool
	// batchSize is the size of the batch its last attempt ran in (Dedup with
	// batching), 0 outside batches.
	batchSize int

	// What Trace and Metrics report once the delivery ends. failed lists the failed
	// attempts, oldest first (Retry); retries counts the in-process retries (Retry);
	// letter is the dead letter stored (DeadLetter); timings lists each attempt's claim
	// and handler durations (Dedup), only when timed (Metrics asks for them).
	failed  []attemptFailure
	retries int
	letter  *dlq.DeadLetter
	timed   bool
	timings []attemptTiming
	timing0 [1]attemptTiming // backs timings for the common single attempt
}

// attemptFailure is one failed attempt of a delivery.
type attemptFailure struct {
	attempt int
	err     error
	at      time.Time
	// wait is the backoff before the next attempt; zero when there was none.
	wait time.Duration
}

// attemptTiming is what one attempt spent claiming the event and in the handler.
type attemptTiming struct {
	claim  time.Duration
	result claimResult
	// handler is the time the handler ran; handlerErr its error. ran is false when
	// the handler did not run (a duplicate, a failed claim).
	handler    time.Duration
	handlerErr bool
	ran        bool
}

// claimResult is how claiming the event in the dedup store ended.
type claimResult uint8

const (
	claimNew claimResult = iota + 1
	claimDuplicate
	claimFailed
	claimStale
)

func (r claimResult) String() string {
	switch r {
	case claimNew:
		return "claimed"
	case claimDuplicate:
		return "duplicate"
	case claimStale:
		return "stale"
	}
	return "error"
}

// addTiming records one attempt's timing when Metrics asked for it.
func (d *delivery) addTiming(t attemptTiming) {
	if !d.timed {
		return
	}
	if d.timings == nil {
		d.timings = d.timing0[:0]
	}
	d.timings = append(d.timings, t)
}

type deliveryKey struct{}

// deliveryOf returns the delivery state of msg, creating it on first use.
func deliveryOf(msg *message.Message) *delivery {
	ctx := msg.Context()
	if d, ok := ctx.Value(deliveryKey{}).(*delivery); ok && d.msg == msg {
		return d
	}
	d := &delivery{msg: msg, attempt: 1}
	msg.SetContext(context.WithValue(ctx, deliveryKey{}, d))
	return d
}

// keyedDeliveryOf returns the delivery state of msg with the event's key worked out,
// by the first middleware that needs it.
func keyedDeliveryOf(msg *message.Message, consumer string, keyFunc dedup.KeyFunc) *delivery {
	d := deliveryOf(msg)
	if d.keyed {
		return d
	}
	d.keyed = true
	d.key.Consumer = consumerName(msg.Context(), consumer)
	if err := dedup.ValidateConsumer(d.key.Consumer); err != nil {
		// Only a Watermill handler name can get here (configured names are checked at
		// start-up): the message is dead-lettered under a storable form of it rather
		// than handed back forever.
		d.key.Consumer, d.keyErr = dlq.Storable(d.key.Consumer, dedup.MaxConsumerLength), err
		return d
	}
	if keyFunc == nil {
		keyFunc = dedup.FromMetadata(dedup.MetadataKey)
	}
	d.key.EventID, d.keyErr = keyFunc(msg)
	if d.keyErr == nil {
		// Whatever a KeyFunc returns must be storable as a key.
		d.keyErr = dedup.ValidateEventID(d.key.EventID, dedup.DefaultMaxIDLength)
	}
	return d
}

// validConsumer checks a configured consumer name; empty means the handler name.
func validConsumer(name string) error {
	if name == "" {
		return nil
	}
	return dedup.ValidateConsumer(name)
}

// consumerName is the configured consumer name, or else the Watermill handler name.
func consumerName(ctx context.Context, configured string) string {
	if configured != "" {
		return configured
	}
	if name := message.HandlerNameFromCtx(ctx); name != "" {
		return name
	}
	return "default"
}

// Attempt returns the 1-based number of the current attempt within this delivery of the
// message being handled; in-process retries count up, a redelivery starts again at 1.
func Attempt(ctx context.Context) (int, bool) {
	d, ok := ctx.Value(deliveryKey{}).(*delivery)
	if !ok {
		return 0, false
	}
	return d.attempt, true
}

// Outcome returns how the delivery of the message being handled ended, once idem's
// middleware decided it: processed, duplicate, retried, dead-lettered, deferred or stale (see
// dedup.Outcome). Read it from middleware that wraps idem's stack (a router-level
// middleware), after the wrapped handler returned; while the handler runs, and outside
// a delivery, ok is false.
func Outcome(ctx context.Context) (dedup.Outcome, bool) {
	d, ok := ctx.Value(deliveryKey{}).(*delivery)
	if !ok || d.outcome == 0 {
		return 0, false
	}
	return d.outcome, true
}

// finalOutcome is the delivery's outcome once the stack below returned err: the one
// DeadLetter (or Dedup) decided, or, in a stack assembled without DeadLetter, the one
// err implies.
func finalOutcome(ctx context.Context, d *delivery, err error) dedup.Outcome {
	switch {
	case d.outcome != 0:
		return d.outcome
	case err == nil:
		return dedup.Processed
	case ctx.Err() != nil || retry.Classify(err) == retry.ClassInfrastructure:
		return dedup.Deferred
	}
	return dedup.Retried
}

// EventKey returns the dedup key of the message being handled.
func EventKey(ctx context.Context) (dedup.Key, bool) {
	d, ok := ctx.Value(deliveryKey{}).(*delivery)
	if !ok || !d.keyed || d.keyErr != nil {
		return dedup.Key{}, false
	}
	return d.key, true
}

func logAttrs(msg *message.Message, d *delivery) []slog.Attr {
	ctx := msg.Context()
	attrs := []slog.Attr{
		slog.String("consumer", d.key.Consumer),
		slog.String("event_id", d.key.EventID),
		slog.String("topic", message.SubscribeTopicFromCtx(ctx)),
		slog.String("message_uuid", msg.UUID),
	}
	if id, ok := CorrelationID(ctx); ok {
		attrs = append(attrs, slog.String("correlation_id", id))
	}
	return attrs
}
