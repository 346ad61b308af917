package consumer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
)

// DecodeError reports a payload that could not be decoded into the handler's event
// type. It is permanent: the message is dead-lettered without retries.
type DecodeError struct {
	// Type is the Go type the payload was decoded into.
	Type string
	Err  error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("consumer: decode payload as %s: %v", e.Type, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Permanent reports true: the same payload will never decode.
func (e *DecodeError) Permanent() bool { return true }

// JSON adapts a typed handler: the payload is decoded from JSON into a T (unknown
// fields are ignored, so producers can add fields), and a payload that does not decode is a permanent
// [*DecodeError]. The handler gets the message context, which carries the attempt's
// transaction (see postgres.TxFromContext) when it runs under a Consumer, and the
// event's key (middleware.EventKey).
func JSON[T any](fn func(ctx context.Context, event T) error) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		event, err := Decode[T](msg.Payload)
		if err != nil {
			return err
		}
		return fn(msg.Context(), event)
	}
}

// Decode decodes a JSON payload into a T as [JSON] does, returning a permanent
// [*DecodeError] when it does not decode.
func Decode[T any](payload []byte) (T, error) {
	var event T
	if err := json.Unmarshal(payload, &event); err != nil {
		return event, &DecodeError{Type: fmt.Sprintf("%T", event), Err: err}
	}
	return event, nil
}
