package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/idemkit/idem/dedup"
)

// CorrelationIDKey is the metadata key of the correlation ID, Watermill's own.
const CorrelationIDKey = wmiddleware.CorrelationIDMetadataKey

// CausationIDKey is the metadata key under which a produced message names the event
// that caused it.
const CausationIDKey = "causation_id"

type correlationKey struct{}

// Correlation makes sure every message has a correlation ID: it takes the one in the
// metadata, or generates one when it is missing, puts it in the message context (see
// [CorrelationID]), and copies it onto every message the handler returns, together
// with [CausationIDKey] set to the consumed event's ID. It does not overwrite IDs the
// handler set itself, and it leaves the consumed message's metadata as it came, so
// that a dead letter keeps the original byte for byte.
func Correlation(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		id := msg.Metadata.Get(CorrelationIDKey)
		if id == "" {
			id = watermill.NewUUID()
		}
		msg.SetContext(WithCorrelationID(msg.Context(), id))
		produced, err := h(msg)
		causation := msg.Metadata.Get(dedup.MetadataKey)
		if k, ok := EventKey(msg.Context()); ok {
			causation = k.EventID // as the configured KeyFunc found it
		}
		if causation == "" {
			causation = msg.UUID
		}
		for _, p := range produced {
			if p.Metadata.Get(CorrelationIDKey) == "" {
				p.Metadata.Set(CorrelationIDKey, id)
			}
			if p.Metadata.Get(CausationIDKey) == "" {
				p.Metadata.Set(CausationIDKey, causation)
			}
		}
		return produced, err
	}
}

// WithCorrelationID returns a copy of ctx carrying the correlation ID id.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation ID of the message being handled.
func CorrelationID(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(correlationKey{}).(string)
	return id, ok && id != ""
}
