package middleware

import (
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

// instrumentationScope names idem's tracer and meter: the import path of the package
// that makes the spans and measurements.
const instrumentationScope = "github.com/idemkit/idem/middleware"

// DefaultMessagingSystem is the messaging.system attribute of spans unless
// TraceConfig.System or PublisherConfig.System says otherwise.
const DefaultMessagingSystem = "watermill"

// Span attribute keys that idem adds to the OpenTelemetry messaging conventions; see
// docs/observability.md.
const (
	attrOutcome           = "idem.outcome"
	attrAttempts          = "idem.attempts"
	attrFailedAttempts    = "idem.failed_attempts"
	attrConsumer          = "idem.consumer"
	attrEventID           = "idem.event_id"
	attrReplayCount       = "idem.replay_count"
	attrConflict          = "idem.conflicting_duplicate"
	attrBatchSize         = "idem.batch.size"
	attrBatchFailed       = "idem.batch.failed"
	attrParkedFor         = "idem.retry.parked_for"
	attrDeadLetterID      = "idem.dead_letter.id"
	attrDeadLetterReason  = "idem.dead_letter.reason"
	attrDeadLetterPrint   = "idem.dead_letter.fingerprint"
	attrRetryDelay        = "idem.retry.delay"
	eventAttemptFailed    = "idem.attempt_failed"
	linkTypeKey           = "idem.link.type"
	linkTypeReplayedTrace = "replay_of"
	maxAttrLen            = 256      // message-supplied strings on spans (IDs), in bytes
	maxStackLen           = 16 << 10 // a panic's stack on a span event, in bytes
)

// TraceConfig configures [Trace].
type TraceConfig struct {
	// TracerProvider makes the consumer spans. Defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context from the message metadata. Defaults to
	// otel.GetTextMapPropagator(), falling back on W3C Trace Context (traceparent,
	// tracestate) while the global propagator propagates nothing.
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute: the transport ("kafka", "rabbitmq",
	// "nats", "redis", "postgresql", …). Defaults to DefaultMessagingSystem.
	System string
	// Consumer names the dedup scope, the idem.consumer attribute. Defaults to the
	// Watermill handler name.
	Consumer string
	// ConsumerGroup is the messaging.consumer.group.name attribute. Defaults to the
	// consumer name: the replicas of one consumer share it.
	ConsumerGroup string
}

// Trace starts one consumer span per delivery, named "process <topic>", following
// the OpenTelemetry messaging semantic conventions. Its parent is the trace context
// the message metadata carries (W3C traceparent and tracestate, or what the
// propagator reads); a message without one, or with a malformed one, starts a new
// trace, and never fails. A replayed message (metadata [dlq.ReplayCountKey]) starts a
// new trace linked to the one it first came with.
//
// The span is in the message context while the stack below runs, so the handler's own
// spans are its children and a dead letter records its trace and span IDs. When the
// delivery ends the span gets the outcome (idem.outcome), the attempts
// (idem.attempts), one event idem.attempt_failed per failed attempt with the error,
// and an error status unless the message was processed or a duplicate. Messages the
// handler returns carry the span's trace context in their metadata unless they carry
// one already. Place Trace outside DeadLetter and Retry, as the consumer package does
// (DESIGN §2). It is safe for concurrent use.
func Trace(cfg TraceConfig) (message.HandlerMiddleware, error) {
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	t := &tracer{
		tracer:   tp.Tracer(instrumentationScope),
		prop:     propagator{configured: cfg.Propagator},
		system:   attribute.String("messaging.system", strings.TrimSpace(cfg.System)),
		consumer: cfg.Consumer,
		group:    cfg.ConsumerGroup,
		starts:   map[startKey]*spanStart{},
	}
	if t.system.Value.AsString() == "" {
		t.system = attribute.String("messaging.system", DefaultMessagingSystem)
	}
	return t.middleware, nil
}

type tracer struct {
	tracer   trace.Tracer
	prop     propagator
	system   attribute.KeyValue
	consumer string
	group    string

	mu     sync.RWMutex
	starts map[startKey]*spanStart
}

type startKey struct{ topic, consumer string }

// spanStart is the name and start options of the spans of one topic and consumer,
// made once: they allocate, and they are the same for every delivery.
type spanStart struct {
	name string
	opts []trace.SpanStartOption
}

func (t *tracer) start(topic, consumer string) *spanStart {
	k := startKey{topic, consumer}
	t.mu.RLock()
	s := t.starts[k]
	t.mu.RUnlock()
	if s != nil {
		return s
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s = t.starts[k]; s != nil {
		return s
	}
	group := t.group
	if group == "" {
		group = consumer
	}
	s = &spanStart{name: "process"}
	if topic != "" {
		s.name += " " + topic
	}
	// The attributes a sampler may look at, as the messaging conventions list them;
	// the others are set only on a span that records.
	s.opts = []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(t.system, operationProcess, operationNameProcess,
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.consumer.group.name", group)),
	}
	t.starts[k] = s
	return s
}

var (
	operationProcess     = attribute.String("messaging.operation.type", "process")
	operationNameProcess = attribute.String("messaging.operation.name", "process")
)

func (t *tracer) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) (produced []*message.Message, err error) {
		d := deliveryOf(msg)
		ctx := msg.Context()
		topic := message.SubscribeTopicFromCtx(ctx)
		consumer := consumerName(ctx, t.consumer)
		start := t.start(topic, consumer)
		opts := start.opts
		parent := t.prop.extract(ctx, msg.Metadata)
		replays, replayed := msg.Metadata[dlq.ReplayCountKey]
		if replayed {
			// A replay is a new piece of work an operator started, not a continuation of
			// the delivery that failed: a new trace, linked to the original one.
			opts = append(slices.Clip(opts), trace.WithNewRoot())
			if origin := trace.SpanContextFromContext(parent); origin.IsValid() && !origin.Equal(trace.SpanContextFromContext(ctx)) {
				opts = append(opts, trace.WithLinks(trace.Link{
					SpanContext: origin,
					Attributes:  []attribute.KeyValue{attribute.String(linkTypeKey, linkTypeReplayedTrace)},
				}))
			}
		}
		spanCtx, span := t.tracer.Start(parent, start.name, opts...)
		msg.SetContext(spanCtx)
		if span.IsRecording() {
			span.SetAttributes(
				attribute.String("messaging.message.id", attrText(msg.UUID)),
				attribute.Int("messaging.message.body.size", len(msg.Payload)),
				attribute.String(attrConsumer, consumer))
			if id, ok := CorrelationID(ctx); ok {
				span.SetAttributes(attribute.String("messaging.message.conversation_id", attrText(id)))
			}
			if n, err := strconv.Atoi(replays); replayed && err == nil {
				span.SetAttributes(attribute.Int(attrReplayCount, n))
			}
		}
		defer func() {
			if v := recover(); v != nil {
				span.SetStatus(codes.Error, "panic in idem's middleware")
				span.End()
				panic(v)
			}
		}()

		produced, err = h(msg)

		for _, p := range produced {
			if p.Metadata == nil {
				p.Metadata = message.Metadata{}
			}
			if p.Metadata[TraceParentKey] == "" {
				t.prop.inject(spanCtx, p.Metadata)
			}
			if !trace.SpanContextFromContext(p.Context()).IsValid() {
				// For a Publisher decorator on the router: its "send" span is a child of
				// this one.
				p.SetContext(trace.ContextWithSpan(p.Context(), span))
			}
		}
		if span.IsRecording() {
			t.finish(span, msg, d, err)
		}
		span.End()
		return produced, err
	}
}

// finish records how the delivery ended on its span.
func (t *tracer) finish(span trace.Span, msg *message.Message, d *delivery, err error) {
	outcome := finalOutcome(msg.Context(), d, err)
	attrs := make([]attribute.KeyValue, 0, 8)
	attempts := d.attempt
	if l := d.letter; d.keyErr != nil || l != nil && l.Reason == dlq.ReasonCrashLooped && len(d.failed) == 0 {
		attempts = 0 // dead-lettered before any attempt ran
	}
	attrs = append(attrs, attribute.String(attrOutcome, outcome.String()), attribute.Int(attrAttempts, attempts))
	if d.keyed {
		attrs = append(attrs, attribute.String(attrEventID, attrText(d.key.EventID)))
	}
	if d.failures > 0 {
		attrs = append(attrs, attribute.Int(attrFailedAttempts, d.failures))
	}
	if d.conflict {
		attrs = append(attrs, attribute.Bool(attrConflict, true))
	}
	if d.batchSize > 0 {
		attrs = append(attrs, attribute.Int(attrBatchSize, d.batchSize))
	}
	if d.parkedFor > 0 {
		attrs = append(attrs, attribute.Float64(attrParkedFor, d.parkedFor.Seconds()))
	}
	if l := d.letter; l != nil && outcome == dedup.DeadLettered {
		attrs = append(attrs, attribute.String(attrDeadLetterReason, string(l.Reason)),
			attribute.String(attrDeadLetterPrint, l.Fingerprint))
		if l.ID != 0 {
			attrs = append(attrs, attribute.Int64(attrDeadLetterID, l.ID))
		}
	}
	span.SetAttributes(attrs...)

	for _, f := range d.failed {
		attemptFailed(span, f.attempt, f.at, f.err, "", f.wait)
	}
	var cause string
	switch {
	case err != nil:
		cause = dlq.ScrubError(err.Error(), 0)
		if len(d.failed) == 0 {
			// A stack without Retry, which lists the failed attempts.
			attemptFailed(span, d.attempt, time.Now(), err, "", 0)
		}
	case outcome == dedup.DeadLettered && d.letter != nil:
		cause = d.letter.Error
		if len(d.failed) == 0 {
			// No attempt failed in this delivery: the event ID is unusable, or the
			// handler crashed the process on earlier deliveries.
			attemptFailed(span, 0, time.Now(), d.keyErr, cause, 0)
		}
	}
	switch outcome {
	case dedup.Processed, dedup.Duplicate, dedup.Stale:
	case dedup.DeadLettered:
		desc := "dead-lettered"
		if d.letter != nil {
			desc += " (" + string(d.letter.Reason) + ")"
		}
		span.SetStatus(codes.Error, joinCause(desc, cause))
	default:
		span.SetStatus(codes.Error, joinCause(outcome.String(), cause))
	}
}

func joinCause(desc, cause string) string {
	if cause == "" {
		return desc
	}
	return desc + ": " + cause
}

// attemptFailed adds an idem.attempt_failed event with the OpenTelemetry exception
// attributes of err (or of the message text alone, when err is nil).
func attemptFailed(span trace.Span, attempt int, at time.Time, err error, text string, wait time.Duration) {
	attrs := make([]attribute.KeyValue, 0, 5)
	if attempt > 0 {
		attrs = append(attrs, attribute.Int("idem.attempt", attempt))
	}
	if err != nil {
		text = dlq.ScrubError(err.Error(), 0)
		attrs = append(attrs, attribute.String("exception.type", errorType(err)))
		var pe *PanicError
		if errors.As(err, &pe) {
			stack := pe.Stack
			if len(stack) > maxStackLen {
				stack = stack[:maxStackLen]
			}
			attrs = append(attrs, attribute.String("exception.stacktrace", strings.ToValidUTF8(string(stack), "\uFFFD")))
		}
	}
	attrs = append(attrs, attribute.String("exception.message", text))
	if wait > 0 {
		attrs = append(attrs, attribute.Float64(attrRetryDelay, wait.Seconds()))
	}
	span.AddEvent(eventAttemptFailed, trace.WithTimestamp(at), trace.WithAttributes(attrs...))
}

// errorType names err's type as span.RecordError does.
func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String() // a pointer, for instance
	}
	return t.PkgPath() + "." + t.Name()
}

// attrText makes a message-supplied string safe for a span attribute: valid UTF-8
// (exporters refuse anything else) and at most maxAttrLen bytes.
func attrText(s string) string {
	if len(s) > maxAttrLen {
		s = s[:maxAttrLen]
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
