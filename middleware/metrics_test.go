package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// collected is what a manual reader collected, by metric name.
type collected map[string]metricdata.Aggregation

func collect(t *testing.T, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := collected{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sum returns the int64 sum of counter name over the data points whose attributes
// include want.
func (c collected) sum(t *testing.T, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	data, ok := c[name]
	if !ok {
		return 0
	}
	s, ok := data.(metricdata.Sum[int64])
	require.True(t, ok, "%s is an int64 sum, not %T", name, data)
	var n int64
	for _, dp := range s.DataPoints {
		if hasAttrs(dp.Attributes, want) {
			n += dp.Value
		}
	}
	return n
}

// count returns how many values histogram name recorded with attributes including want.
func (c collected) count(t *testing.T, name string, want ...attribute.KeyValue) uint64 {
	t.Helper()
	data, ok := c[name]
	if !ok {
		return 0
	}
	h, ok := data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a float64 histogram, not %T", name, data)
	var n uint64
	for _, dp := range h.DataPoints {
		if hasAttrs(dp.Attributes, want) {
			n += dp.Count
		}
	}
	return n
}

// attributeKeys lists every attribute key of every data point.
func (c collected) attributeKeys() map[string]bool {
	keys := map[string]bool{}
	add := func(s attribute.Set) {
		for _, kv := range s.ToSlice() {
			keys[string(kv.Key)] = true
		}
	}
	for _, data := range c {
		switch d := data.(type) {
		case metricdata.Sum[int64]:
			for _, dp := range d.DataPoints {
				add(dp.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, dp := range d.DataPoints {
				add(dp.Attributes)
			}
		case metricdata.Gauge[int64]:
			for _, dp := range d.DataPoints {
				add(dp.Attributes)
			}
		case metricdata.Gauge[float64]:
			for _, dp := range d.DataPoints {
				add(dp.Attributes)
			}
		}
	}
	return keys
}

// histogram returns the one data point of histogram name whose attributes include
// want; ok is false when there is none.
func (c collected) histogram(t *testing.T, name string, want ...attribute.KeyValue) (dp metricdata.HistogramDataPoint[float64], ok bool) {
	t.Helper()
	data, found := c[name]
	if !found {
		return dp, false
	}
	h, isHistogram := data.(metricdata.Histogram[float64])
	require.True(t, isHistogram, "%s is a float64 histogram, not %T", name, data)
	for _, p := range h.DataPoints {
		if hasAttrs(p.Attributes, want) {
			require.False(t, ok, "more than one data point of %s has %v", name, want)
			dp, ok = p, true
		}
	}
	return dp, ok
}

// gauge returns the value of float64 gauge name in the one data point whose attributes
// include want; ok is false when there is none.
func (c collected) gauge(t *testing.T, name string, want ...attribute.KeyValue) (v float64, ok bool) {
	t.Helper()
	data, found := c[name]
	if !found {
		return 0, false
	}
	g, isGauge := data.(metricdata.Gauge[float64])
	require.True(t, isGauge, "%s is a float64 gauge, not %T", name, data)
	for _, p := range g.DataPoints {
		if hasAttrs(p.Attributes, want) {
			require.False(t, ok, "more than one data point of %s has %v", name, want)
			v, ok = p.Value, true
		}
	}
	return v, ok
}

func hasAttrs(s attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := s.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

func outcome(o string) attribute.KeyValue { return attribute.String("outcome", o) }

func TestMetrics(t *testing.T) {
	t.Parallel()

	t.Run("EachOutcomeCountedOncePerDelivery", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			h, _ := handlerFailing(errBoom) // the first attempt fails, the retry succeeds
			processed := newMessage("evt-1", "x")
			_, err := o.stack(t, h)(processed)
			require.NoError(t, err)
			_, err = o.stack(t, h)(redeliver(processed)) // duplicate
			require.NoError(t, err)
			_, err = o.stack(t, func(*message.Message) ([]*message.Message, error) {
				return nil, retry.Permanent(errors.New("bad payload"))
			})(newMessage("evt-2", "x")) // dead-lettered
			require.NoError(t, err)

			o.withoutRetry = true
			_, err = o.stack(t, func(*message.Message) ([]*message.Message, error) { return nil, errBoom })(newMessage("evt-3", "x"))
			require.ErrorIs(t, err, errBoom) // retried: handed back
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			deferred := newMessage("evt-4", "x")
			deferred.SetContext(ctx)
			_, err = o.stack(t, func(*message.Message) ([]*message.Message, error) { return nil, context.Canceled })(deferred)
			require.Error(t, err) // deferred: shutdown

			c := collect(t, o.reader)
			orders := attribute.String("consumer", "orders")
			for _, name := range []string{"processed", "duplicate", "dead-lettered", "retried", "deferred"} {
				require.Equal(t, int64(1), c.sum(t, "idem.messages", orders, outcome(name)), "outcome %s", name)
				require.Equal(t, uint64(1), c.count(t, "idem.delivery.duration", orders, outcome(name)), "outcome %s", name)
			}
			require.Equal(t, int64(5), c.sum(t, "idem.messages"), "five deliveries, five counts")

			require.Equal(t, int64(1), c.sum(t, "idem.retries", orders), "one in-process retry")
			require.Equal(t, int64(1), c.sum(t, "idem.dead_letters", orders, attribute.String("reason", "permanent")))
			require.Equal(t, int64(1), c.sum(t, "idem.dead_letters"))

			// Attempts that claimed: evt-1 twice, evt-2, evt-3; evt-1's redelivery found
			// the claim; evt-4 never reached the store's handler (cancelled context).
			require.Equal(t, uint64(4), c.count(t, "idem.claim.duration", attribute.String("result", "claimed")))
			require.Equal(t, uint64(1), c.count(t, "idem.claim.duration", attribute.String("result", "duplicate")))
			require.Equal(t, uint64(1), c.count(t, "idem.handler.duration", attribute.String("result", "ok")))
			require.Equal(t, uint64(3), c.count(t, "idem.handler.duration", attribute.String("result", "error")))
		})
	})

	t.Run("OnlyLowCardinalityAttributes", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			for _, id := range []string{"evt-1", "evt-2", "evt-3"} {
				msg := newMessage(id, "payload of "+id)
				msg.Metadata.Set(middleware.CorrelationIDKey, "corr-"+id)
				h, _ := handlerFailing(errBoom)
				_, err := o.stack(t, h)(msg)
				require.NoError(t, err)
			}
			_, err := o.stack(t, func(*message.Message) ([]*message.Message, error) { return nil, retry.Permanent(errBoom) })(newMessage("evt-4", "x"))
			require.NoError(t, err)
			allowed := map[string]bool{"consumer": true, "topic": true, "outcome": true, "result": true, "reason": true}
			for key := range collect(t, o.reader).attributeKeys() {
				require.True(t, allowed[key], "metric attribute %q is not one of the low-cardinality ones", key)
			}
		})
	})

	t.Run("ConsumerDefaultsToTheHandlerName", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: o.mp})
		require.NoError(t, err)
		_, err = metrics(func(*message.Message) ([]*message.Message, error) { return nil, nil })(newMessage("evt-1", "x"))
		require.NoError(t, err)
		c := collect(t, o.reader)
		require.Equal(t, int64(1), c.sum(t, "idem.messages", attribute.String("consumer", "default"), outcome("processed")),
			"outside a router and a stack that names it, the consumer is the default one")
	})
}

// fakeBacklog is a DeadLetterBacklog with fixed answers.
type fakeBacklog struct {
	count  int64
	oldest time.Time
	err    error
	calls  atomic.Int32
}

func (f *fakeBacklog) PendingDeadLetters(ctx context.Context) (int64, time.Time, error) {
	f.calls.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		return 0, time.Time{}, errors.New("the callback must bound the query")
	}
	return f.count, f.oldest, f.err
}

func TestObserveDeadLetterBacklog(t *testing.T) {
	t.Parallel()

	gauges := func(t *testing.T, c collected) (int64, float64) {
		t.Helper()
		pending, ok := c["idem.dead_letters.pending"].(metricdata.Gauge[int64])
		require.True(t, ok)
		require.Len(t, pending.DataPoints, 1)
		age, ok := c["idem.dead_letters.oldest_age"].(metricdata.Gauge[float64])
		require.True(t, ok)
		require.Len(t, age.DataPoints, 1)
		return pending.DataPoints[0].Value, age.DataPoints[0].Value
	}

	t.Run("ReadAtEachCollection", func(t *testing.T) {
		t.Parallel()
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		b := &fakeBacklog{count: 3, oldest: time.Now().Add(-time.Hour)}
		reg, err := middleware.ObserveDeadLetterBacklog(mp, b)
		require.NoError(t, err)
		n, age := gauges(t, collect(t, reader))
		require.Equal(t, int64(3), n)
		require.InDelta(t, 3600, age, 60)

		b.count, b.oldest = 0, time.Time{}
		n, age = gauges(t, collect(t, reader))
		require.Zero(t, n)
		require.Zero(t, age, "no pending dead letter: age 0")

		require.NoError(t, reg.Unregister())
		before := b.calls.Load()
		collect(t, reader)
		require.Equal(t, before, b.calls.Load(), "unregistered: the store is not asked any more")
	})

	t.Run("AFailingStoreFailsNoCollection", func(t *testing.T) {
		t.Parallel()
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		_, err := middleware.ObserveDeadLetterBacklog(mp, &fakeBacklog{err: errors.New("connection refused")})
		require.NoError(t, err)
		metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: mp})
		require.NoError(t, err)
		_, err = metrics(func(*message.Message) ([]*message.Message, error) { return nil, nil })(newMessage("evt-1", "x"))
		require.NoError(t, err)
		var rm metricdata.ResourceMetrics
		_ = reader.Collect(context.Background(), &rm) // the SDK reports the callback's error
		require.NotEmpty(t, rm.ScopeMetrics, "the other metrics are still collected")
	})
}

func TestQueueDuration(t *testing.T) {
	t.Parallel()

	orders := attribute.String("consumer", "orders")
	queued := func(t *testing.T, o *observed) (metricdata.HistogramDataPoint[float64], bool) {
		t.Helper()
		return collect(t, o.reader).histogram(t, "idem.queue.duration", orders, attribute.String("topic", ""))
	}

	t.Run("FromTheStampOncePerDelivery", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			msg := newMessage("evt-1", "x")
			middleware.StampPublishedAt(msg, time.Now())
			time.Sleep(90 * time.Second)
			h, calls := handlerFailing(errBoom, errBoom) // three attempts, one delivery
			_, err := o.stack(t, h)(msg)
			require.NoError(t, err)
			require.Equal(t, 3, *calls)

			dp, ok := queued(t, o)
			require.True(t, ok, "a stamped message records its time in the queue")
			require.Equal(t, uint64(1), dp.Count, "once per delivery, not per attempt")
			require.InDelta(t, 90, dp.Sum, 1e-9, "up to the delivery entering the stack: the backoff waits are not queue time")

			later := newMessage("evt-2", "x")
			middleware.StampPublishedAt(later, time.Now().Add(-2500*time.Millisecond))
			_, err = o.stack(t, h)(later)
			require.NoError(t, err)
			dp, _ = queued(t, o)
			require.Equal(t, uint64(2), dp.Count)
			lo, _ := dp.Min.Value()
			hi, _ := dp.Max.Value()
			require.InDelta(t, 2.5, lo, 1e-9)
			require.InDelta(t, 90, hi, 1e-9)
		})
	})

	t.Run("PublishedThroughThePublisher", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			o := newObserved(t)
			broker := &capturePublisher{}
			pub, err := middleware.NewPublisher(broker, middleware.PublisherConfig{TracerProvider: o.tp})
			require.NoError(t, err)
			require.NoError(t, pub.Publish("orders", newMessage("evt-1", "x")))
			time.Sleep(1500 * time.Millisecond)
			h, _ := handlerFailing()
			_, err = o.stack(t, h)(broker.msgs[0])
			require.NoError(t, err)
			dp, ok := queued(t, o)
			require.True(t, ok)
			require.InDelta(t, 1.5, dp.Sum, 1e-9)
		})
	})

	t.Run("NothingWithoutAReadableStamp", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		msgs := []*message.Message{newMessage("evt-1", "x"), newMessage("evt-2", "x"), newMessage("evt-3", "x"), newMessage("evt-4", "x")}
		msgs[1].Metadata.Set(middleware.PublishedAtKey, "")
		msgs[2].Metadata.Set(middleware.PublishedAtKey, "last tuesday")
		middleware.StampPublishedAt(msgs[3], time.Now().Add(-72*time.Hour))
		msgs[3].Metadata.Set(dlq.ReplayCountKey, "1") // a replayed dead letter keeps its original stamp
		h, calls := handlerFailing()
		for _, msg := range msgs {
			_, err := o.stack(t, h)(msg)
			require.NoError(t, err)
		}
		require.Equal(t, len(msgs), *calls, "every message is handled")
		c := collect(t, o.reader)
		require.Equal(t, int64(len(msgs)), c.sum(t, "idem.messages", orders, outcome("processed")))
		require.Zero(t, c.count(t, "idem.queue.duration"), "no stamp, an unreadable one or a replay: no queue time")
	})

	t.Run("AStampAheadOfTheClockIsZero", func(t *testing.T) {
		t.Parallel()
		o := newObserved(t)
		msg := newMessage("evt-1", "x")
		middleware.StampPublishedAt(msg, time.Now().Add(time.Hour))
		h, _ := handlerFailing()
		_, err := o.stack(t, h)(msg)
		require.NoError(t, err)
		dp, ok := queued(t, o)
		require.True(t, ok, "the producer's clock is ahead: a wait of 0 is recorded")
		require.Equal(t, uint64(1), dp.Count)
		require.Zero(t, dp.Sum)
	})
}

func TestObserveInFlight(t *testing.T) {
	t.Parallel()

	const age = "idem.delivery.oldest_in_flight_age"
	type testBundle struct {
		reader   *sdkmetric.ManualReader
		mp       *sdkmetric.MeterProvider
		inFlight *middleware.InFlight
		reg      interface{ Unregister() error }
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		bundle := &testBundle{reader: sdkmetric.NewManualReader(), inFlight: &middleware.InFlight{}}
		bundle.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(bundle.reader))
		reg, err := middleware.ObserveInFlight(bundle.mp, bundle.inFlight)
		require.NoError(t, err)
		bundle.reg = reg
		return bundle
	}
	metrics := func(t *testing.T, bundle *testBundle, consumer string) message.HandlerMiddleware {
		t.Helper()
		m, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: bundle.mp, Consumer: consumer, InFlight: bundle.inFlight})
		require.NoError(t, err)
		return m
	}
	// blocked delivers a message to h through mw in a goroutine, and returns what lets
	// the handler return.
	blocked := func(mw message.HandlerMiddleware) (release func()) {
		unblock := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = mw(func(*message.Message) ([]*message.Message, error) {
				<-unblock
				return nil, nil
			})(newMessage("evt-1", "x"))
		}()
		return func() {
			close(unblock)
			<-done
		}
	}

	t.Run("TheOldestBlockedHandlersAge", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			orders := attribute.String("consumer", "orders")
			mw := metrics(t, bundle, "orders")
			v, ok := collect(t, bundle.reader).gauge(t, age, orders)
			require.True(t, ok, "observed from the moment the consumer's middleware exists")
			require.Zero(t, v)

			first := blocked(mw)
			synctest.Wait()
			time.Sleep(42 * time.Second)
			v, _ = collect(t, bundle.reader).gauge(t, age, orders)
			require.InDelta(t, 42, v, 1e-9, "a handler that does not return shows its age")

			second := blocked(mw)
			synctest.Wait()
			time.Sleep(8 * time.Second)
			v, _ = collect(t, bundle.reader).gauge(t, age, orders)
			require.InDelta(t, 50, v, 1e-9, "the oldest one's")

			first()
			v, _ = collect(t, bundle.reader).gauge(t, age, orders)
			require.InDelta(t, 8, v, 1e-9, "the first returned: the second is the oldest")

			second()
			v, ok = collect(t, bundle.reader).gauge(t, age, orders)
			require.True(t, ok)
			require.Zero(t, v, "none in flight: 0")

			require.NoError(t, bundle.reg.Unregister())
			_, ok = collect(t, bundle.reader).gauge(t, age)
			require.False(t, ok, "unregistered: not observed any more")
		})
	})

	t.Run("PerConsumer", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			release := blocked(metrics(t, bundle, "billing"))
			_ = metrics(t, bundle, "shipping")
			unnamed := metrics(t, bundle, "")
			synctest.Wait()
			time.Sleep(time.Minute)
			c := collect(t, bundle.reader)
			v, _ := c.gauge(t, age, attribute.String("consumer", "billing"))
			require.InDelta(t, 60, v, 1e-9)
			v, ok := c.gauge(t, age, attribute.String("consumer", "shipping"))
			require.True(t, ok)
			require.Zero(t, v)
			_, ok = c.gauge(t, age, attribute.String("consumer", "default"))
			require.False(t, ok, "a middleware named by the handler shows once a delivery names it")
			_, err := unnamed(func(*message.Message) ([]*message.Message, error) { return nil, nil })(newMessage("evt-2", "x"))
			require.NoError(t, err)
			v, ok = collect(t, bundle.reader).gauge(t, age, attribute.String("consumer", "default"))
			require.True(t, ok)
			require.Zero(t, v)
			release()
			g, ok := collect(t, bundle.reader)[age].(metricdata.Gauge[float64])
			require.True(t, ok)
			require.Len(t, g.DataPoints, 3)
			for _, dp := range g.DataPoints {
				require.Equal(t, 1, dp.Attributes.Len(), "the consumer, nothing else: %v", dp.Attributes.ToSlice())
			}
		})
	})

	t.Run("APanicLeavesToo", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		mw := metrics(t, bundle, "orders")
		require.Panics(t, func() {
			_, _ = mw(func(*message.Message) ([]*message.Message, error) { panic("in a middleware below") })(newMessage("evt-1", "x"))
		})
		v, _ := collect(t, bundle.reader).gauge(t, age, attribute.String("consumer", "orders"))
		require.Zero(t, v, "a delivery that is gone is not in flight")
	})

	t.Run("ConcurrentDeliveries", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := metrics(t, bundle, "orders")(func(*message.Message) ([]*message.Message, error) { return nil, nil })
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range 200 {
					_, _ = h(newMessage("evt-1", "x"))
				}
			})
		}
		wg.Go(func() {
			for range 20 {
				collect(t, bundle.reader)
			}
		})
		wg.Wait()
		v, ok := collect(t, bundle.reader).gauge(t, age, attribute.String("consumer", "orders"))
		require.True(t, ok)
		require.Zero(t, v, "every delivery left")
	})

	t.Run("NilInFlightIsAConfigError", func(t *testing.T) {
		t.Parallel()
		_, err := middleware.ObserveInFlight(nil, nil)
		require.ErrorContains(t, err, "needs an InFlight")
	})
}

// inFlightStack is observedStack's stack, Metrics tracking its deliveries in inFlight,
// as the consumer package assembles it.
func inFlightStack(tb testing.TB, tp trace.TracerProvider, mp metric.MeterProvider, inFlight *middleware.InFlight, h message.HandlerFunc) message.HandlerFunc {
	tb.Helper()
	logger := slog.New(slog.DiscardHandler)
	tracing, err := middleware.Trace(middleware.TraceConfig{TracerProvider: tp, Consumer: "orders"})
	require.NoError(tb, err)
	metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: mp, Consumer: "orders", InFlight: inFlight})
	require.NoError(tb, err)
	deadLetter, err := middleware.DeadLetter(middleware.DeadLetterConfig{Store: dlqtest.NewMemoryStore(), Consumer: "orders", Logger: logger})
	require.NoError(tb, err)
	retrying, err := middleware.Retry(middleware.RetryConfig{Logger: logger})
	require.NoError(tb, err)
	dedupe, err := middleware.Dedup(middleware.DedupConfig{Store: claimAll{}, Consumer: "orders", Logger: logger})
	require.NoError(tb, err)
	return chain(h, middleware.Correlation, tracing, metrics, deadLetter, retrying, dedupe, middleware.Recover)
}

// BenchmarkQueueObservability measures what the time in queue and the in-flight
// tracking add to the stack of BenchmarkObservability with the SDK: a message without
// a publish stamp (as there), one with a stamp (idem.queue.duration recorded), the
// same with its delivery tracked for idem.delivery.oldest_in_flight_age, that one from
// parallel goroutines (the per-consumer lock under contention), and that one with
// no-op providers; then Metrics alone with no-op providers, without and with the
// in-flight tracking, serial and parallel, where its cost is not lost in the noise of
// the rest. Run:
//
//	go test -run '^$' -bench 'Observability$' -benchmem -count 10 ./middleware/
func BenchmarkQueueObservability(b *testing.B) {
	handler := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	sdk := func() (trace.TracerProvider, metric.MeterProvider) {
		return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(dropSpans{})),
			sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	}
	noop := func() (trace.TracerProvider, metric.MeterProvider) {
		return tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider()
	}
	for _, bc := range []struct {
		name      string
		providers func() (trace.TracerProvider, metric.MeterProvider)
		stamped   bool
		inFlight  bool
		parallel  bool
		alone     bool // Metrics alone
	}{
		{"unstamped", sdk, false, false, false, false},
		{"stamped", sdk, true, false, false, false},
		{"stamped+inflight", sdk, true, true, false, false},
		{"stamped+inflight-parallel", sdk, true, true, true, false},
		{"noop-stamped+inflight", noop, true, true, false, false},
		{"alone-noop", noop, true, false, false, true},
		{"alone-noop+inflight", noop, true, true, false, true},
		{"alone-noop-parallel", noop, true, false, true, true},
		{"alone-noop+inflight-parallel", noop, true, true, true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tp, mp := bc.providers()
			var inFlight *middleware.InFlight
			if bc.inFlight {
				inFlight = &middleware.InFlight{}
				reg, err := middleware.ObserveInFlight(mp, inFlight)
				require.NoError(b, err)
				b.Cleanup(func() { _ = reg.Unregister() })
			}
			h := inFlightStack(b, tp, mp, inFlight, handler)
			if bc.alone {
				metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: mp, Consumer: "orders", InFlight: inFlight})
				require.NoError(b, err)
				h = metrics(handler)
			}
			msgs := make([]*message.Message, b.N)
			stamp := time.Now().Add(-time.Second)
			for i := range msgs {
				msgs[i] = newMessage("evt-1", "x")
				msgs[i].Metadata.Set(middleware.TraceParentKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
				if bc.stamped {
					middleware.StampPublishedAt(msgs[i], stamp)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			if bc.parallel {
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := h(msgs[next.Add(1)-1]); err != nil {
							b.Error(err)
							return
						}
					}
				})
				return
			}
			for i := range b.N {
				if _, err := h(msgs[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
