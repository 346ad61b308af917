package middleware

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
)

// delivery is what idem's middleware learn about one delivery of a message, shared
// between them through the message context.
type delivery struct {
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
}

type deliveryKey struct{}

// deliveryOf returns the delivery state of msg, creating it on first use.
func deliveryOf(msg *message.Message) *delivery {
	ctx := msg.Context()
	if d, ok := ctx.Value(deliveryKey{}).(*delivery); ok {
		return d
	}
	d := &delivery{attempt: 1}
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
	if keyFunc == nil {
		keyFunc = dedup.FromMetadata(dedup.MetadataKey)
	}
	d.key.EventID, d.keyErr = keyFunc(msg)
	return d
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
