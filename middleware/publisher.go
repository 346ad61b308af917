package middleware

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dlq"
)

// PublisherConfig configures [NewPublisher].
type PublisherConfig struct {
	// TracerProvider makes the producer spans. Defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Propagator writes the trace context into the message metadata. Defaults to
	// otel.GetTextMapPropagator(), falling back on W3C Trace Context (traceparent,
	// tracestate) while the global propagator propagates nothing.
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute. Defaults to DefaultMessagingSystem.
	System string
}

// Publisher decorates a Watermill publisher so that every message it publishes can
// be followed: it gets a correlation ID, a causation ID when published while handling
// an event, a publish time, and the trace context of a producer span. It is a
// message.Publisher, and it is safe for concurrent use when the publisher it
// decorates is.
type Publisher struct {
	pub    message.Publisher
	tracer trace.Tracer
	prop   propagator
	system attribute.KeyValue
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns pub decorated as [Publisher] describes.
func NewPublisher(pub message.Publisher, cfg PublisherConfig) (*Publisher, error) {
	if pub == nil {
		return nil, errors.New("middleware: NewPublisher needs a publisher, got nil")
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	system := strings.TrimSpace(cfg.System)
	if system == "" {
		system = DefaultMessagingSystem
	}
	return &Publisher{
		pub:    pub,
		tracer: tp.Tracer(instrumentationScope),
		prop:   propagator{configured: cfg.Propagator},
		system: attribute.String("messaging.system", system),
	}, nil
}

// Publish publishes msgs to topic like [Publisher.PublishContext], with each message's
// own context (msg.Context()) in place of ctx: what Watermill's router uses for the
// messages a handler returns.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.publish(nil, topic, msgs)
}

// PublishContext publishes msgs to topic through the decorated publisher. Before, it
// sets on each message what the message does not carry yet:
//
//   - metadata correlation_id ([CorrelationIDKey]): the correlation ID of ctx (see
//     [CorrelationID]), or a new one;
//   - metadata causation_id ([CausationIDKey]): the ID of the event being handled, when
//     ctx is a handler's (see [EventKey]);
//   - metadata published_at ([PublishedAtKey]): now, one time for all of msgs. A
//     message relayed from the outbox, or forwarded, keeps the stamp it carries, so
//     that idem.queue.duration covers its whole way.
//
// It then starts one producer span per message, "send <topic>", a child of the span
// in ctx, or, when ctx has none, of the trace context the message already carries (a
// message forwarded from an outbox keeps its trace), and writes the span's trace
// context into the metadata (W3C traceparent and tracestate). The spans end when the
// decorated publisher returns, with its error. The messages' own contexts are left
// unchanged.
func (p *Publisher) PublishContext(ctx context.Context, topic string, msgs ...*message.Message) error {
	return p.publish(ctx, topic, msgs)
}

func (p *Publisher) publish(ctx context.Context, topic string, msgs []*message.Message) error {
	name := "send"
	if topic != "" {
		name += " " + topic
	}
	spans := make([]trace.Span, len(msgs))
	var publishedAt string
	for i, msg := range msgs {
		mctx := ctx
		if mctx == nil {
			mctx = msg.Context()
		}
		if msg.Metadata == nil {
			msg.Metadata = message.Metadata{}
		}
		correlation := msg.Metadata[CorrelationIDKey]
		if correlation == "" {
			var ok bool
			if correlation, ok = CorrelationID(mctx); !ok {
				correlation = watermill.NewUUID()
			}
			msg.Metadata[CorrelationIDKey] = correlation
		}
		if msg.Metadata[CausationIDKey] == "" {
			if k, ok := EventKey(mctx); ok {
				msg.Metadata[CausationIDKey] = k.EventID
			}
		}
		if msg.Metadata[PublishedAtKey] == "" {
			if publishedAt == "" {
				publishedAt = formatPublishedAt(time.Now())
			}
			msg.Metadata[PublishedAtKey] = publishedAt
		}
		parent := mctx
		if !trace.SpanContextFromContext(mctx).IsValid() {
			parent = p.prop.extract(mctx, msg.Metadata)
		}
		sctx, span := p.tracer.Start(parent, name,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(p.system,
				attribute.String("messaging.operation.type", "send"),
				attribute.String("messaging.operation.name", "send"),
				attribute.String("messaging.destination.name", topic),
				attribute.String("messaging.message.id", attrText(msg.UUID)),
				attribute.String("messaging.message.conversation_id", attrText(correlation)),
				attribute.Int("messaging.message.body.size", len(msg.Payload))))
		p.prop.inject(sctx, msg.Metadata)
		spans[i] = span
	}
	err := p.pub.Publish(topic, msgs...)
	for _, span := range spans {
		if err != nil && span.IsRecording() {
			text := dlq.ScrubError(err.Error(), 0)
			span.AddEvent("exception", trace.WithAttributes(
				attribute.String("exception.type", errorType(err)),
				attribute.String("exception.message", text)))
			span.SetStatus(codes.Error, text)
		}
		span.End()
	}
	return err
}

// Close closes the decorated publisher.
func (p *Publisher) Close() error { return p.pub.Close() }
