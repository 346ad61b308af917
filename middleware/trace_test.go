package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// observed is idem's whole stack, in the order of DESIGN §2, on memory stores, with
// an SDK tracer provider exporting to memory and a meter provider read by hand.
type observed struct {
	spans  *tracetest.InMemoryExporter
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	dlq    *dlqtest.MemoryStore
	dedup  *deduptest.MemoryStore
	policy retry.Policy
	// withoutRetry leaves Retry out, so that a transient failure is handed back.
	withoutRetry bool
}

func newObserved(t *testing.T) *observed {
	t.Helper()
	o := &observed{
		spans:  tracetest.NewInMemoryExporter(),
		reader: sdkmetric.NewManualReader(),
		dlq:    dlqtest.NewMemoryStore(),
		dedup:  deduptest.NewMemoryStore(),
		policy: retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond, MaxElapsedTime: -1},
	}
	o.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(o.spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	o.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	return o
}

// stack wraps h in Correlation, Trace, Metrics, DeadLetter, Retry, Dedup and Recover.
func (o *observed) stack(t *testing.T, h message.HandlerFunc) message.HandlerFunc {
	t.Helper()
	return observedStack(t, o.tp, o.mp, o.dedup, o.dlq, o.policy, o.withoutRetry, h)
}

func observedStack(t testing.TB, tp trace.TracerProvider, mp metric.MeterProvider, ds dedup.Store, ls dlq.Store,
	policy retry.Policy, withoutRetry bool, h message.HandlerFunc,
) message.HandlerFunc {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	tracing, err := middleware.Trace(middleware.TraceConfig{TracerProvider: tp, Consumer: "orders"})
	require.NoError(t, err)
	metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: mp, Consumer: "orders"})
	require.NoError(t, err)
	deadLetter, err := middleware.DeadLetter(middleware.DeadLetterConfig{Store: ls, Policy: policy, Consumer: "orders", Logger: logger})
	require.NoError(t, err)
	retrying, err := middleware.Retry(middleware.RetryConfig{Policy: policy, Logger: logger})
	require.NoError(t, err)
	dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: ds, Consumer: "orders", Classify: policy.Class, Logger: logger})
	require.NoError(t, err)
	mws := []message.HandlerMiddleware{middleware.Correlation, tracing, metrics, deadLetter, retrying, dedupe, middleware.Recover}
	if withoutRetry {
		mws = []message.HandlerMiddleware{middleware.Correlation, tracing, metrics, deadLetter, dedupe, middleware.Recover}
	}
	return chain(h, mws...)
}

// consumerSpans returns the ended consumer spans, oldest first.
func (o *observed) consumerSpans() []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range o.spans.GetSpans() {
		if s.SpanKind == trace.SpanKindConsumer {
			out = append(out, s)
		}
	}
	return out
}

func spanAttr(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func eventAttr(e sdktrace.Event, key string) (attribute.Value, bool) {
	for _, kv := range e.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func requireAttr(t *testing.T, s tracetest.SpanStub, key string, want any) {
	t.Helper()
	v, ok := spanAttr(s, key)
	require.True(t, ok, "span %q has no attribute %s", s.Name, key)
	require.Equal(t, want, v.AsInterface(), "attribute %s", key)
}

// handlerFailing returns a handler that fails with errs in turn, then succeeds.
func handlerFailing(errs ...error) (message.HandlerFunc, *int) {
	var mu sync.Mutex
	calls := 0
	return func(msg *message.Message) ([]*message.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls > runaway {
			return nil, retry.Permanent(errRunaway)
		}
		if calls <= len(errs) {
			return nil, errs[calls-1]
		}
		return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("out"))}, nil
	}, &calls
}

// capturePublisher keeps what is published to it.
type capturePublisher struct {
	mu   sync.Mutex
	msgs []*message.Message
	err  error
}

func (p *capturePublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for _, m := range msgs {
		p.msgs = append(p.msgs, m.Copy()) // as a broker does: metadata travels, the context does not
	}
	return nil
}

func (p *capturePublisher) Close() error { return nil }

func TestTrace(t *testing.T) {
	t.Parallel()

	t.Run("ConsumerSpanContinuesTheProducersTrace", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		broker := &capturePublisher{}
		pub, err := middleware.NewPublisher(broker, middleware.PublisherConfig{TracerProvider: o.tp, System: "gochannel"})
		require.NoError(t, err)
		require.NoError(t, pub.PublishContext(context.Background(), "orders", newMessage("evt-1", "x")))
		require.Len(t, broker.msgs, 1)

		h, _ := handlerFailing()
		_, err = o.stack(t, h)(broker.msgs[0])
		require.NoError(t, err)

		spans := o.spans.GetSpans()
		require.Len(t, spans, 2)
		producer, consumer := spans[0], spans[1]
		require.Equal(t, trace.SpanKindProducer, producer.SpanKind)
		require.Equal(t, "send orders", producer.Name)
		require.Equal(t, trace.SpanKindConsumer, consumer.SpanKind)
		require.Equal(t, producer.SpanContext.TraceID(), consumer.SpanContext.TraceID(), "one trace")
		require.Equal(t, producer.SpanContext.SpanID(), consumer.Parent.SpanID(), "the consumer span is the producer span's child")
		require.True(t, consumer.Parent.IsRemote())
		requireAttr(t, consumer, "messaging.system", "watermill")
		requireAttr(t, consumer, "messaging.operation.type", "process")
		requireAttr(t, consumer, "messaging.operation.name", "process")
		requireAttr(t, consumer, "messaging.consumer.group.name", "orders")
		requireAttr(t, consumer, "messaging.message.id", broker.msgs[0].UUID)
		requireAttr(t, consumer, "messaging.message.conversation_id", broker.msgs[0].Metadata.Get(middleware.CorrelationIDKey))
		requireAttr(t, consumer, "idem.consumer", "orders")
		requireAttr(t, consumer, "idem.event_id", "evt-1")
		requireAttr(t, consumer, "idem.outcome", "processed")
		requireAttr(t, consumer, "idem.attempts", int64(1))
		require.Empty(t, consumer.Events)
		require.Equal(t, codes.Unset, consumer.Status.Code)
	})

	t.Run("FailedAttemptsAreEvents", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			h, calls := handlerFailing(errBoom, fmt.Errorf("gateway: %w", errBoom))
			_, err := o.stack(t, h)(newMessage("evt-1", "x"))
			require.NoError(t, err)
			require.Equal(t, 3, *calls)

			spans := o.consumerSpans()
			require.Len(t, spans, 1)
			s := spans[0]
			requireAttr(t, s, "idem.outcome", "processed")
			requireAttr(t, s, "idem.attempts", int64(3))
			requireAttr(t, s, "idem.failed_attempts", int64(2))
			require.Len(t, s.Events, 2)
			for i, e := range s.Events {
				require.Equal(t, "idem.attempt_failed", e.Name)
				n, _ := eventAttr(e, "idem.attempt")
				require.Equal(t, int64(i+1), n.AsInt64())
				typ, _ := eventAttr(e, "exception.type")
				require.NotEmpty(t, typ.AsString())
				delay, ok := eventAttr(e, "idem.retry.delay")
				require.True(t, ok, "a retried attempt says how long it waited")
				require.Greater(t, delay.AsFloat64(), 0.0)
			}
			text, _ := eventAttr(s.Events[1], "exception.message")
			require.Equal(t, "gateway: boom", text.AsString())
			require.Equal(t, codes.Unset, s.Status.Code, "the delivery succeeded in the end")
		})
	})

	t.Run("DuplicateCarriesItsOutcome", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		h, calls := handlerFailing()
		msg := newMessage("evt-1", "x")
		_, err := o.stack(t, h)(msg)
		require.NoError(t, err)
		_, err = o.stack(t, h)(redeliver(msg))
		require.NoError(t, err)
		require.Equal(t, 1, *calls)
		spans := o.consumerSpans()
		require.Len(t, spans, 2)
		requireAttr(t, spans[0], "idem.outcome", "processed")
		requireAttr(t, spans[1], "idem.outcome", "duplicate")
		require.Equal(t, codes.Unset, spans[1].Status.Code)
	})

	t.Run("DeadLetterCarriesItsOutcomeAndKeepsTheSpan", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			h, calls := handlerFailing(errBoom, errBoom, errBoom, errBoom)
			_, err := o.stack(t, h)(newMessage("evt-1", "x"))
			require.NoError(t, err, "dead-lettered and acked")
			require.Equal(t, 3, *calls)

			spans := o.consumerSpans()
			require.Len(t, spans, 1)
			s := spans[0]
			requireAttr(t, s, "idem.outcome", "dead-lettered")
			requireAttr(t, s, "idem.dead_letter.reason", "exhausted")
			require.Len(t, s.Events, 3, "every failed attempt, the last one included")
			_, waited := eventAttr(s.Events[2], "idem.retry.delay")
			require.False(t, waited, "the last attempt was not retried")
			require.Equal(t, codes.Error, s.Status.Code)
			require.Equal(t, "dead-lettered (exhausted): boom", s.Status.Description)

			letters := o.dlq.All()
			require.Len(t, letters, 1)
			require.Equal(t, s.SpanContext.TraceID().String(), letters[0].TraceID, "the dead letter keeps the trace")
			require.Equal(t, s.SpanContext.SpanID().String(), letters[0].SpanID, "and the consumer span")
			requireAttr(t, s, "idem.dead_letter.fingerprint", letters[0].Fingerprint)
		})
	})

	t.Run("PermanentFailureAndPanicStack", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		_, err := o.stack(t, func(*message.Message) ([]*message.Message, error) {
			return nil, retry.Permanent(errors.New("bad payload"))
		})(newMessage("evt-1", "x"))
		require.NoError(t, err)
		synctest.Test(t, func(t *testing.T) {
			_, err := o.stack(t, func(*message.Message) ([]*message.Message, error) { panic("kaboom") })(newMessage("evt-2", "x"))
			require.NoError(t, err)
		})
		spans := o.consumerSpans()
		require.Len(t, spans, 2)
		requireAttr(t, spans[0], "idem.dead_letter.reason", "permanent")
		require.Len(t, spans[0].Events, 1)
		stack, ok := eventAttr(spans[1].Events[0], "exception.stacktrace")
		require.True(t, ok, "a panic's stack goes to the span")
		require.Contains(t, stack.AsString(), "goroutine")
	})

	t.Run("MalformedEventIDIsAnEventToo", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		h, calls := handlerFailing()
		_, err := o.stack(t, h)(newMessage("", "x"))
		require.NoError(t, err)
		require.Zero(t, *calls)
		s := o.consumerSpans()[0]
		requireAttr(t, s, "idem.outcome", "dead-lettered")
		requireAttr(t, s, "idem.dead_letter.reason", "malformed")
		requireAttr(t, s, "idem.attempts", int64(0))
		require.Len(t, s.Events, 1)
		text, _ := eventAttr(s.Events[0], "exception.message")
		require.Contains(t, text.AsString(), "invalid event ID")
	})

	t.Run("RetriedAndDeferredCarryTheirOutcome", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		o.withoutRetry = true
		h, _ := handlerFailing(errBoom, retry.Infrastructure(errors.New("connection refused")))
		_, err := o.stack(t, h)(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, errBoom, "handed back for redelivery")
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // shutdown: no waiting before the hand-back
		msg := newMessage("evt-1", "x")
		msg.SetContext(ctx)
		_, err = o.stack(t, h)(msg)
		require.Error(t, err)
		spans := o.consumerSpans()
		require.Len(t, spans, 2)
		requireAttr(t, spans[0], "idem.outcome", "retried")
		require.Equal(t, codes.Error, spans[0].Status.Code)
		require.Equal(t, "retried: boom", spans[0].Status.Description)
		require.Len(t, spans[0].Events, 1, "without Retry, the failure is still an event")
		requireAttr(t, spans[1], "idem.outcome", "deferred")
	})

	t.Run("MalformedTraceHeadersStartANewTrace", func(t *testing.T) {
		t.Parallel()
		for name, md := range map[string]map[string]string{
			"Garbage":          {"traceparent": "not a traceparent"},
			"BadHex":           {"traceparent": "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01"},
			"ZeroTraceID":      {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
			"UnknownVersionFF": {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Truncated":        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f0"},
			"BadTracestate":    {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "=,,==\x00\xff"},
			"NonUTF8":          {"traceparent": "\xff\xfe\x00", "tracestate": "\xff"},
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				o := newObserved(t)
				h, calls := handlerFailing()
				msg := newMessage("evt-1", "x")
				for k, v := range md {
					msg.Metadata.Set(k, v)
				}
				produced, err := o.stack(t, h)(msg)
				require.NoError(t, err)
				require.Equal(t, 1, *calls)
				s := o.consumerSpans()[0]
				requireAttr(t, s, "idem.outcome", "processed")
				if name == "BadTracestate" {
					require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext.TraceID().String(), "a valid traceparent is followed without its tracestate")
					return
				}
				require.False(t, s.Parent.IsValid(), "a new root")
				require.True(t, s.SpanContext.IsValid())
				require.Len(t, produced, 1)
				require.Contains(t, produced[0].Metadata.Get(middleware.TraceParentKey), s.SpanContext.TraceID().String())
			})
		}
	})

	t.Run("OversizedMetadataNeverFails", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		h, calls := handlerFailing()
		msg := newMessage("evt-1", "x")
		msg.UUID = strings.Repeat("u", 1<<20)
		msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-"+strings.Repeat("a", 1<<20)+"-01")
		var members []string
		for i := range 5000 {
			members = append(members, fmt.Sprintf("k%d=%s", i, strings.Repeat("v", 200)))
		}
		msg.Metadata.Set("tracestate", strings.Join(members, ","))
		msg.Metadata.Set("baggage", strings.Repeat("k=v,", 1<<18))
		msg.Metadata.Set(middleware.CorrelationIDKey, strings.Repeat("\xff", 1<<20))
		for i := range 10000 {
			msg.Metadata.Set(fmt.Sprintf("key-%d", i), strings.Repeat("x", 100))
		}
		produced, err := o.stack(t, h)(msg)
		require.NoError(t, err)
		require.Equal(t, 1, *calls)
		require.Len(t, produced, 1)
		s := o.consumerSpans()[0]
		requireAttr(t, s, "idem.outcome", "processed")
		require.False(t, s.Parent.IsValid(), "an oversized traceparent is malformed: a new root")
		for _, kv := range s.Attributes {
			if kv.Value.Type() == attribute.STRING {
				require.LessOrEqual(t, len(kv.Value.AsString()), 256*3, "attribute %s is bounded", kv.Key)
				require.True(t, utf8.ValidString(kv.Value.AsString()), "attribute %s is valid UTF-8", kv.Key)
			}
		}
	})

	t.Run("ReplayStartsANewTraceLinkedToTheOriginal", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		const original = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		h, _ := handlerFailing()
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.TraceParentKey, original)
		msg.Metadata.Set(dlq.ReplayCountKey, "2")
		_, err := o.stack(t, h)(msg)
		require.NoError(t, err)
		s := o.consumerSpans()[0]
		require.False(t, s.Parent.IsValid(), "a replay is a new root")
		require.NotEqual(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext.TraceID().String())
		require.Len(t, s.Links, 1)
		require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.Links[0].SpanContext.TraceID().String())
		require.Equal(t, "00f067aa0ba902b7", s.Links[0].SpanContext.SpanID().String())
		requireAttr(t, s, "idem.replay_count", int64(2))
	})

	t.Run("ProducedMessagesCarryTheConsumerSpan", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		h, _ := handlerFailing()
		produced, err := o.stack(t, h)(newMessage("evt-1", "x"))
		require.NoError(t, err)
		s := o.consumerSpans()[0]
		require.Len(t, produced, 1)
		require.Equal(t, "00-"+s.SpanContext.TraceID().String()+"-"+s.SpanContext.SpanID().String()+"-01",
			produced[0].Metadata.Get(middleware.TraceParentKey))
		require.Equal(t, s.SpanContext.SpanID(), trace.SpanContextFromContext(produced[0].Context()).SpanID(),
			"a Publisher on the router makes its send span a child of the consumer span")
	})

	t.Run("HandlerSpansAreChildren", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		_, err := o.stack(t, func(msg *message.Message) ([]*message.Message, error) {
			_, span := o.tp.Tracer("test").Start(msg.Context(), "charge card")
			span.End()
			return nil, nil
		})(newMessage("evt-1", "x"))
		require.NoError(t, err)
		spans := o.spans.GetSpans()
		require.Len(t, spans, 2)
		require.Equal(t, spans[1].SpanContext.SpanID(), spans[0].Parent.SpanID())
	})

	t.Run("NoopProviderPassesTheTraceContextOn", func(t *testing.T) {
		t.Parallel()
		h := observedStack(t, tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider(), deduptest.NewMemoryStore(), dlqtest.NewMemoryStore(),
			retry.Policy{}, false, func(*message.Message) ([]*message.Message, error) {
				return []*message.Message{message.NewMessage(watermill.NewUUID(), nil)}, nil
			})
		const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.TraceParentKey, parent)
		produced, err := h(msg)
		require.NoError(t, err)
		require.Equal(t, parent, produced[0].Metadata.Get(middleware.TraceParentKey), "without an SDK the trace still travels")
	})

	t.Run("ConfiguredPropagatorIsUsed", func(t *testing.T) {
		t.Parallel()
		exp := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		tracing, err := middleware.Trace(middleware.TraceConfig{TracerProvider: tp, Propagator: propagation.Baggage{}, System: "kafka", ConsumerGroup: "billing-group"})
		require.NoError(t, err)
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.TraceParentKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		_, err = tracing(func(*message.Message) ([]*message.Message, error) { return nil, nil })(msg)
		require.NoError(t, err)
		s := exp.GetSpans()[0]
		require.False(t, s.Parent.IsValid(), "a propagator that does not read traceparent: no parent")
		requireAttr(t, s, "messaging.system", "kafka")
		requireAttr(t, s, "messaging.consumer.group.name", "billing-group")
		requireAttr(t, s, "idem.consumer", "default")
	})
}

// BenchmarkObservability measures what Trace and Metrics cost per message, on top of
// the rest of the stack: without them, with no-op providers, and with the SDK (every
// span sampled and dropped at its end, so that nothing but the SDK's own work is
// counted; metrics aggregated in memory). The dedup store claims every event without
// keeping anything, so that the figures are the middleware's alone; the message
// carries a traceparent. Run:
//
//	go test -run '^$' -bench Observability -benchmem -count 10 ./middleware/
func BenchmarkObservability(b *testing.B) {
	handler := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	logger := slog.New(slog.DiscardHandler)
	policy := retry.Policy{}
	for _, bc := range []struct {
		name  string
		stack func(b *testing.B) message.HandlerFunc
	}{
		{"without", func(b *testing.B) message.HandlerFunc {
			deadLetter, _ := middleware.DeadLetter(middleware.DeadLetterConfig{Store: dlqtest.NewMemoryStore(), Consumer: "orders", Logger: logger})
			retrying, _ := middleware.Retry(middleware.RetryConfig{Logger: logger})
			dedupe, _ := middleware.Dedup(middleware.DedupConfig{Store: claimAll{}, Consumer: "orders", Logger: logger})
			return chain(handler, middleware.Correlation, deadLetter, retrying, dedupe, middleware.Recover)
		}},
		{"noop", func(b *testing.B) message.HandlerFunc {
			return observedStack(b, tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider(), claimAll{}, dlqtest.NewMemoryStore(), policy, false, handler)
		}},
		{"sdk", func(b *testing.B) message.HandlerFunc {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(dropSpans{}))
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			return observedStack(b, tp, mp, claimAll{}, dlqtest.NewMemoryStore(), policy, false, handler)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := bc.stack(b)
			msgs := make([]*message.Message, b.N)
			for i := range msgs {
				msgs[i] = newMessage("evt-1", "x")
				msgs[i].Metadata.Set(middleware.TraceParentKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := h(msgs[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// claimAll is a dedup store that claims every event and keeps nothing.
type claimAll struct{}

func (claimAll) Run(ctx context.Context, _ dedup.Key, fn func(context.Context) error) (bool, error) {
	return true, fn(ctx)
}

func (claimAll) RecordFailure(context.Context, dedup.Key, string) (int, error) { return 1, nil }

// dropSpans is a span processor that drops every span: the SDK does all its work
// but exporting.
type dropSpans struct{}

func (dropSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (dropSpans) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (dropSpans) Shutdown(context.Context) error                  { return nil }
func (dropSpans) ForceFlush(context.Context) error                { return nil }
