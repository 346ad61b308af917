package middleware_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/middleware"
)

// ExampleLogHandler shows the correlation ID of the message being handled added to
// a log line the handler writes, without the handler naming it.
func ExampleLogHandler() {
	// Leave the time out, so that the output is the same on every run.
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	logger := slog.New(middleware.LogHandler(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: noTime})))

	h := middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
		logger.InfoContext(msg.Context(), "charging card", "order", "ord-42")
		return nil, nil
	})
	in := message.NewMessage("in-1", nil)
	in.Metadata.Set(middleware.CorrelationIDKey, "checkout-7")
	if _, err := h(in); err != nil {
		fmt.Println(err)
	}
	// Output:
	// level=INFO msg="charging card" order=ord-42 correlation_id=checkout-7
}

// ExampleNewPublisher shows a publisher decorated to give every message it publishes
// the correlation ID of the context (and, once a program installs the OpenTelemetry
// SDK, the trace context of a producer span).
func ExampleNewPublisher() {
	broker := &capturePublisher{}
	pub, err := middleware.NewPublisher(broker, middleware.PublisherConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := middleware.WithCorrelationID(context.Background(), "checkout-7")
	msg := message.NewMessage("out-1", []byte(`{"order":42}`))
	if err := pub.PublishContext(ctx, "orders", msg); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(broker.msgs[0].Metadata.Get(middleware.CorrelationIDKey))
	// Output:
	// checkout-7
}
