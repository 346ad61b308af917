package middleware_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/middleware"
)

func TestPublisher(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		broker *capturePublisher
		spans  *tracetest.InMemoryExporter
		tp     *sdktrace.TracerProvider
		pub    *middleware.Publisher
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		bundle := &testBundle{broker: &capturePublisher{}, spans: tracetest.NewInMemoryExporter()}
		bundle.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(bundle.spans))
		var err error
		bundle.pub, err = middleware.NewPublisher(bundle.broker, middleware.PublisherConfig{TracerProvider: bundle.tp, System: "rabbitmq"})
		require.NoError(t, err)
		return bundle
	}
	out := func() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("out")) }

	t.Run("ProducerSpanPerMessage", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		a, b := out(), out()
		require.NoError(t, bundle.pub.PublishContext(context.Background(), "orders", a, b))
		spans := bundle.spans.GetSpans()
		require.Len(t, spans, 2)
		for i, s := range spans {
			require.Equal(t, "send orders", s.Name)
			require.Equal(t, trace.SpanKindProducer, s.SpanKind)
			requireAttr(t, s, "messaging.system", "rabbitmq")
			requireAttr(t, s, "messaging.operation.type", "send")
			requireAttr(t, s, "messaging.operation.name", "send")
			requireAttr(t, s, "messaging.destination.name", "orders")
			published := bundle.broker.msgs[i]
			requireAttr(t, s, "messaging.message.id", published.UUID)
			require.Equal(t, "00-"+s.SpanContext.TraceID().String()+"-"+s.SpanContext.SpanID().String()+"-01",
				published.Metadata.Get(middleware.TraceParentKey))
		}
		require.NotEqual(t, spans[0].SpanContext.TraceID(), spans[1].SpanContext.TraceID(), "without a parent, each message starts a trace")
	})

	t.Run("ChildOfTheSpanInTheContext", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		ctx, parent := bundle.tp.Tracer("test").Start(context.Background(), "place order")
		require.NoError(t, bundle.pub.PublishContext(ctx, "orders", out()))
		parent.End()
		spans := bundle.spans.GetSpans()
		require.Len(t, spans, 2)
		require.Equal(t, spans[1].SpanContext.SpanID(), spans[0].Parent.SpanID())
	})

	t.Run("ForwardedMessageKeepsItsTrace", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := out()
		msg.Metadata.Set(middleware.TraceParentKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		msg.Metadata.Set(middleware.TraceStateKey, "vendor=1")
		require.NoError(t, bundle.pub.Publish("orders", msg))
		s := bundle.spans.GetSpans()[0]
		require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext.TraceID().String())
		require.Equal(t, "00f067aa0ba902b7", s.Parent.SpanID().String())
		require.Contains(t, bundle.broker.msgs[0].Metadata.Get(middleware.TraceParentKey), s.SpanContext.SpanID().String(),
			"the metadata now names the send span")
		require.Equal(t, "vendor=1", bundle.broker.msgs[0].Metadata.Get(middleware.TraceStateKey))
	})

	t.Run("CorrelationFromTheContextOrNew", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		ctx := middleware.WithCorrelationID(context.Background(), "checkout-7")
		own := out()
		own.Metadata.Set(middleware.CorrelationIDKey, "own")
		require.NoError(t, bundle.pub.PublishContext(ctx, "orders", out(), own))
		require.NoError(t, bundle.pub.PublishContext(context.Background(), "orders", out()))
		msgs := bundle.broker.msgs
		require.Equal(t, "checkout-7", msgs[0].Metadata.Get(middleware.CorrelationIDKey))
		require.Equal(t, "own", msgs[1].Metadata.Get(middleware.CorrelationIDKey), "an ID set by the caller stays")
		require.NotEmpty(t, msgs[2].Metadata.Get(middleware.CorrelationIDKey), "generated when missing")
		require.Empty(t, msgs[0].Metadata.Get(middleware.CausationIDKey), "no event is being handled")
		requireAttr(t, bundle.spans.GetSpans()[0], "messaging.message.conversation_id", "checkout-7")
	})

	t.Run("InsideAHandlerCausationIsTheEvent", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: deduptest.NewMemoryStore(), Consumer: "orders", Logger: testLogger(t)})
		require.NoError(t, err)
		tracing, err := middleware.Trace(middleware.TraceConfig{TracerProvider: bundle.tp})
		require.NoError(t, err)
		in := newMessage("evt-7", "x")
		in.Metadata.Set(middleware.CorrelationIDKey, "corr-7")
		_, err = chain(func(msg *message.Message) ([]*message.Message, error) {
			return nil, bundle.pub.PublishContext(msg.Context(), "invoices", out())
		}, middleware.Correlation, tracing, dedupe)(in)
		require.NoError(t, err)
		published := bundle.broker.msgs[0]
		require.Equal(t, "corr-7", published.Metadata.Get(middleware.CorrelationIDKey))
		require.Equal(t, "evt-7", published.Metadata.Get(middleware.CausationIDKey))
		spans := bundle.spans.GetSpans()
		require.Len(t, spans, 2)
		send, process := spans[0], spans[1]
		require.Equal(t, process.SpanContext.SpanID(), send.Parent.SpanID(), "the send span is a child of the consumer span")
	})

	t.Run("StampsThePublishTimeAndKeepsOne", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		relayed := out()
		relayed.Metadata.Set(middleware.PublishedAtKey, "2025-03-14T09:26:53.589793238Z") // stamped when written to the outbox
		unreadable := out()
		unreadable.Metadata.Set(middleware.PublishedAtKey, "yesterday")
		before := time.Now()
		require.NoError(t, bundle.pub.PublishContext(context.Background(), "orders", out(), out(), relayed, unreadable))
		after := time.Now()
		msgs := bundle.broker.msgs
		stamp := msgs[0].Metadata.Get(middleware.PublishedAtKey)
		at, err := time.Parse(time.RFC3339Nano, stamp)
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(stamp, "Z"), "in UTC: %s", stamp)
		require.False(t, at.Before(before) || at.After(after), "%s is the publish time", stamp)
		require.Equal(t, stamp, msgs[1].Metadata.Get(middleware.PublishedAtKey), "one time for one publish")
		require.Equal(t, "2025-03-14T09:26:53.589793238Z", msgs[2].Metadata.Get(middleware.PublishedAtKey), "a relayed message keeps its first stamp")
		require.Equal(t, "yesterday", msgs[3].Metadata.Get(middleware.PublishedAtKey), "the producer's own stamp is never overwritten")
	})

	t.Run("PublishErrorEndsTheSpanInError", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.broker.err = errors.New("broker down: password=hunter2")
		err := bundle.pub.Publish("orders", out())
		require.ErrorIs(t, err, bundle.broker.err)
		s := bundle.spans.GetSpans()[0]
		require.Equal(t, codes.Error, s.Status.Code)
		require.NotContains(t, s.Status.Description, "hunter2", "error text is scrubbed of secrets")
		require.Len(t, s.Events, 1)
		require.Equal(t, "exception", s.Events[0].Name)
	})

	t.Run("NilPublisherIsAConfigError", func(t *testing.T) {
		t.Parallel()
		_, err := middleware.NewPublisher(nil, middleware.PublisherConfig{})
		require.ErrorContains(t, err, "needs a publisher")
	})

	t.Run("NilMetadataIsMade", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := out()
		msg.Metadata = nil
		require.NoError(t, bundle.pub.Publish("orders", msg))
		require.NotEmpty(t, bundle.broker.msgs[0].Metadata.Get(middleware.TraceParentKey))
	})
}
