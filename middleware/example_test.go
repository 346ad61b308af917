package middleware_test

import (
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/middleware"
)

// ExampleCorrelation shows the correlation ID of a consumed event carried onto the
// message its handler produces, with the event's ID as the causation ID.
func ExampleCorrelation() {
	h := middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage("out-1", []byte(`{"status":"confirmed"}`))}, nil
	})

	in := message.NewMessage("in-1", []byte(`{"order":42}`))
	in.Metadata.Set("event_id", "order-42-placed")
	in.Metadata.Set(middleware.CorrelationIDKey, "checkout-7")

	produced, err := h(in)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(produced[0].Metadata.Get(middleware.CorrelationIDKey))
	fmt.Println(produced[0].Metadata.Get(middleware.CausationIDKey))
	// Output:
	// checkout-7
	// order-42-placed
}

// ExampleCorrelationID shows a handler reading the correlation ID of the message it
// handles, generated when the message came without one.
func ExampleCorrelationID() {
	h := middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
		id, ok := middleware.CorrelationID(msg.Context())
		fmt.Println(ok, id != "")
		return nil, nil
	})

	if _, err := h(message.NewMessage("in-1", nil)); err != nil {
		fmt.Println(err)
	}

	withID := message.NewMessage("in-2", nil)
	withID.Metadata.Set(middleware.CorrelationIDKey, "checkout-7")
	h = middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
		id, _ := middleware.CorrelationID(msg.Context())
		fmt.Println(id)
		return nil, nil
	})
	if _, err := h(withID); err != nil {
		fmt.Println(err)
	}
	// Output:
	// true true
	// checkout-7
}

// ExampleRecover shows a handler panic turned into an error that can be retried and
// dead-lettered, with the stack kept apart for logs.
func ExampleRecover() {
	h := middleware.Recover(func(msg *message.Message) ([]*message.Message, error) {
		var totals map[string]int
		totals["order-42"]++ // a bug: the map was never made
		return nil, nil
	})

	_, err := h(message.NewMessage("in-1", nil))
	fmt.Println(err)

	var pe *middleware.PanicError
	if errors.As(err, &pe) {
		fmt.Println(len(pe.Stack) > 0)
	}
	// Output:
	// handler panicked: assignment to entry in nil map
	// true
}
