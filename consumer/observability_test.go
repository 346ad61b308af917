package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

func spanAttr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// spansByKind returns the ended spans of kind, by their idem.event_id (consumer spans)
// or by the event_id of the message they sent (producer spans, keyed by message ID).
func spansOfKind(exp *tracetest.InMemoryExporter, kind trace.SpanKind) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.SpanKind == kind {
			out = append(out, s)
		}
	}
	return out
}

// TestTracesThroughWatermillSQL follows events from a producer to a consumer through a
// real watermill-sql round trip on PostgreSQL: one trace per event, the consumer span
// a child of the producer span, failed attempts as events, and the outcome of a
// duplicate and a dead letter on their spans.
func TestTracesThroughWatermillSQL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	br := newSQLBroker(t, b.pool)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	c, err := consumer.New(consumer.Config{
		Store:           b.store,
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, MaxElapsedTime: 10 * time.Second},
		AckDeadline:     30 * time.Second,
		TracerProvider:  tp,
		MessagingSystem: "postgresql",
		Logger:          testLogger(t),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	var mu sync.Mutex
	calls := map[string]int{}
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "billing", br.topic, br.sub, func(msg *message.Message) error {
			id := msg.Metadata.Get(dedup.MetadataKey)
			mu.Lock()
			calls[id]++
			n := calls[id]
			mu.Unlock()
			if err := b.effect(msg.Context(), msg); err != nil {
				return err
			}
			switch {
			case id == "evt-retried" && n <= 2:
				return fmt.Errorf("payment gateway timeout (call %d)", n)
			case id == "evt-poison":
				return retry.Permanent(errors.New("unknown currency XXX"))
			}
			return nil
		})
	})

	producer := c.Publisher(br.pub)
	ctx, root := tp.Tracer("checkout").Start(context.Background(), "POST /checkout")
	for _, id := range []string{"evt-retried", "evt-dup", "evt-dup", "evt-poison"} {
		require.NoError(t, producer.PublishContext(ctx, br.topic, newMessage(id, "order "+id)))
	}
	root.End()

	require.Eventually(t, func() bool { return len(spansOfKind(exp, trace.SpanKindConsumer)) == 4 },
		20*time.Second, 10*time.Millisecond, "four deliveries, four consumer spans")

	producers := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spansOfKind(exp, trace.SpanKindProducer) {
		producers[s.SpanContext.SpanID()] = s
		require.Equal(t, "send "+br.topic, s.Name)
	}
	require.Len(t, producers, 4)
	byEvent := map[string][]tracetest.SpanStub{}
	for _, s := range spansOfKind(exp, trace.SpanKindConsumer) {
		require.Equal(t, "process "+br.topic, s.Name)
		p, ok := producers[s.Parent.SpanID()]
		require.True(t, ok, "the consumer span of %s is a child of a producer span", spanAttr(s, "idem.event_id"))
		require.Equal(t, p.SpanContext.TraceID(), s.SpanContext.TraceID(), "producer and consumer share one trace")
		require.Equal(t, root.SpanContext().TraceID(), s.SpanContext.TraceID(), "the one the checkout started")
		require.Equal(t, "postgresql", spanAttr(s, "messaging.system"))
		require.Equal(t, "billing", spanAttr(s, "messaging.consumer.group.name"))
		require.Equal(t, br.topic, spanAttr(s, "messaging.destination.name"))
		byEvent[spanAttr(s, "idem.event_id")] = append(byEvent[spanAttr(s, "idem.event_id")], s)
	}

	retried := byEvent["evt-retried"]
	require.Len(t, retried, 1)
	require.Equal(t, "processed", spanAttr(retried[0], "idem.outcome"))
	require.Equal(t, "3", spanAttr(retried[0], "idem.attempts"))
	require.Len(t, retried[0].Events, 2, "two failed attempts, two events")
	for i, e := range retried[0].Events {
		require.Equal(t, "idem.attempt_failed", e.Name)
		var text string
		for _, kv := range e.Attributes {
			if kv.Key == "exception.message" {
				text = kv.Value.AsString()
			}
		}
		require.Equal(t, fmt.Sprintf("payment gateway timeout (call %d)", i+1), text)
	}

	dups := byEvent["evt-dup"]
	require.Len(t, dups, 2)
	outcomes := []string{spanAttr(dups[0], "idem.outcome"), spanAttr(dups[1], "idem.outcome")}
	require.ElementsMatch(t, []string{"processed", "duplicate"}, outcomes)

	poison := byEvent["evt-poison"]
	require.Len(t, poison, 1)
	require.Equal(t, "dead-lettered", spanAttr(poison[0], "idem.outcome"))
	require.Equal(t, "permanent", spanAttr(poison[0], "idem.dead_letter.reason"))
	letter, err := b.store.DeadLetter(context.Background(), "billing", "evt-poison")
	require.NoError(t, err)
	require.Equal(t, poison[0].SpanContext.TraceID().String(), letter.TraceID, "the dead letter keeps the trace")
	require.Equal(t, poison[0].SpanContext.SpanID().String(), letter.SpanID, "and the consumer span")
	require.NotEmpty(t, letter.CorrelationID)
	require.Equal(t, letter.Metadata[middleware.CorrelationIDKey], letter.CorrelationID, "the correlation ID the producer set")
}

// TestTraceAcrossConsumers follows one event from a consumer through the message it
// produces to the next consumer: a single trace, with a send span in between.
func TestTraceAcrossConsumers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), TracerProvider: tp, Logger: testLogger(t)})
	require.NoError(t, err)
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubSub.Close() })
	audited := make(chan *message.Message, 1)
	runRouter(t, func(r *message.Router) {
		c.AddHandler(r, confirmName, ordersTopic, pubSub, confirmedTopic, pubSub, func(msg *message.Message) ([]*message.Message, error) {
			out := message.NewMessage(watermill.NewUUID(), []byte("confirmed"))
			out.Metadata.Set(dedup.MetadataKey, "confirmed-"+msg.Metadata.Get(dedup.MetadataKey))
			return []*message.Message{out}, nil
		})
		c.AddConsumerHandler(r, auditName, confirmedTopic, pubSub, func(msg *message.Message) error {
			audited <- msg
			return nil
		})
	})
	in := newMessage("evt-1", "order 1")
	in.Metadata.Set(middleware.CorrelationIDKey, "corr-1")
	require.NoError(t, pubSub.Publish(ordersTopic, in))
	var out *message.Message
	select {
	case out = <-audited:
	case <-time.After(20 * time.Second):
		require.FailNow(t, "the produced message was not consumed")
	}
	require.Equal(t, "corr-1", out.Metadata.Get(middleware.CorrelationIDKey))
	require.Equal(t, "evt-1", out.Metadata.Get(middleware.CausationIDKey))

	require.Eventually(t, func() bool { return len(exp.GetSpans()) == 3 }, 10*time.Second, 10*time.Millisecond)
	var confirm, send, audit tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		switch s.Name {
		case "process " + ordersTopic:
			confirm = s
		case "send " + confirmedTopic:
			send = s
		case "process " + confirmedTopic:
			audit = s
		}
	}
	require.False(t, confirm.Parent.IsValid(), "the first message came without a trace: a new one")
	require.Equal(t, confirm.SpanContext.SpanID(), send.Parent.SpanID(), "the router's publish is a child of the consumer span")
	require.Equal(t, send.SpanContext.SpanID(), audit.Parent.SpanID(), "the next consumer continues from the send span")
	require.Equal(t, confirm.SpanContext.TraceID(), audit.SpanContext.TraceID())
	require.Equal(t, "corr-1", spanAttr(audit, "messaging.message.conversation_id"))
}

// TestMetricsThroughTheConsumer checks the consumer's wiring of the metrics: each
// outcome counted once per delivery, on the store's PostgreSQL, and the dead-letter
// backlog read from the store.
func TestMetricsThroughTheConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	newConsumer := func(p retry.Policy) *consumer.Consumer {
		c, err := consumer.New(consumer.Config{Store: b.store, Retry: p, MeterProvider: mp, Logger: testLogger(t)})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, c.Close()) })
		return c
	}
	c := newConsumer(fastPolicy())
	// The first wait crosses MaxElapsedTime: the failed message is handed back.
	handBack := newConsumer(retry.Policy{MaxAttempts: 3, InitialInterval: time.Hour, MaxInterval: time.Hour, MaxElapsedTime: time.Millisecond})

	var failOnce sync.Once
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		var err error
		failOnce.Do(func() { err = errBoom })
		if err != nil {
			return err
		}
		if string(msg.Payload) == "poison" {
			return retry.Permanent(errors.New("bad payload"))
		}
		return b.effect(msg.Context(), msg)
	})
	evt1 := newMessage("evt-1", "placed")
	require.NoError(t, deliver(h, evt1))                          // processed, after one in-process retry
	require.NoError(t, deliver(h, evt1))                          // duplicate
	require.NoError(t, deliver(h, newMessage("evt-2", "poison"))) // dead-lettered
	require.Error(t, deliver(handBack.WrapConsumer("orders", func(*message.Message) error { return errBoom }), newMessage("evt-3", "x")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	shutdown := newMessage("evt-4", "x")
	shutdown.SetContext(ctx)
	require.Error(t, h(shutdown)) // deferred

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	counts := map[string]int64{}
	var retries, deadLetters, pending int64
	var oldest float64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					switch m.Name {
					case "idem.messages":
						consumerName, _ := dp.Attributes.Value("consumer")
						require.Equal(t, "orders", consumerName.AsString())
						o, _ := dp.Attributes.Value(attribute.Key("outcome"))
						counts[o.AsString()] += dp.Value
					case "idem.retries":
						retries += dp.Value
					case "idem.dead_letters":
						deadLetters += dp.Value
					}
				}
			case metricdata.Gauge[int64]:
				if m.Name == "idem.dead_letters.pending" {
					pending = d.DataPoints[0].Value
				}
			case metricdata.Gauge[float64]:
				if m.Name == "idem.dead_letters.oldest_age" {
					oldest = d.DataPoints[0].Value
				}
			}
		}
	}
	require.Equal(t, map[string]int64{"processed": 1, "duplicate": 1, "dead-lettered": 1, "retried": 1, "deferred": 1}, counts)
	require.Equal(t, int64(1), retries)
	require.Equal(t, int64(1), deadLetters)
	require.Equal(t, int64(1), pending, "read from the store")
	require.GreaterOrEqual(t, oldest, 0.0)
	require.Equal(t, 1, b.count(t, "SELECT count(*) FROM "+pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()))
}

// BenchmarkObservabilityPostgres is the consumer's whole stack on PostgreSQL (claim,
// one effect row, commit; concurrency 1), with Trace and Metrics on no-op providers
// (the default until the program installs an SDK) and on the SDK (every span sampled
// and dropped at its end; metrics aggregated in memory). Run:
//
//	go test -run '^$' -bench ObservabilityPostgres -benchtime 5000x -count 6 ./consumer/
func BenchmarkObservabilityPostgres(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  func(*consumer.Config)
	}{
		{"noop", func(*consumer.Config) {}},
		{"sdk", func(c *consumer.Config) {
			c.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(dropSpans{}))
			c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			store, pool := testdbStore(b, false)
			effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
			_, err := pool.Exec(context.Background(), "CREATE TABLE "+effects+" (event_id text PRIMARY KEY)")
			require.NoError(b, err)
			cfg := consumer.Config{Store: store, Logger: discardLogger()}
			bc.cfg(&cfg)
			c, err := consumer.New(cfg)
			require.NoError(b, err)
			h := c.WrapConsumer("billing", func(msg *message.Message) error {
				ctx := msg.Context()
				tx, _ := postgres.TxFromContext(ctx)
				_, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id) VALUES ($1)", msg.Metadata.Get(dedup.MetadataKey))
				return err
			})
			msgs := make([]*message.Message, b.N)
			for i := range msgs {
				msgs[i] = newMessage(fmt.Sprintf("evt-%d", i), "x")
				msgs[i].Metadata.Set(middleware.TraceParentKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := h(msgs[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// dropSpans is a span processor that drops every span: the SDK does all its work
// but exporting.
type dropSpans struct{}

func (dropSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (dropSpans) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (dropSpans) Shutdown(context.Context) error                  { return nil }
func (dropSpans) ForceFlush(context.Context) error                { return nil }
