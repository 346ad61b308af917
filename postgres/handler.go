package postgres

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/retry"
)

// ErrNoTx is returned by a [Handler] that runs without idem's transaction in its
// context: it was registered without a consumer.Consumer around it.
var ErrNoTx = errors.New("postgres: no idem transaction in the message context; register the handler through consumer.Consumer")

// Handler adapts a typed handler that writes through tx: the payload is decoded from
// JSON into a T, and fn runs inside the attempt's transaction, which commits its
// writes together with the event's claim, once. fn must not commit or roll back tx.
// A payload that does not decode is a permanent error (consumer.DecodeError): the
// message is dead-lettered without retries. middleware.EventKey(ctx) gives the event's
// key, for instance as the idempotency key of a call to another service.
func Handler[T any](fn func(ctx context.Context, tx pgx.Tx, event T) error) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ctx := msg.Context()
		tx, ok := TxFromContext(ctx)
		if !ok {
			return retry.Infrastructure(ErrNoTx)
		}
		event, err := consumer.Decode[T](msg.Payload)
		if err != nil {
			return err
		}
		return fn(ctx, tx, event)
	}
}
