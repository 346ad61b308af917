package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

// durationBuckets are the histogram boundaries of idem's durations, in seconds: from a
// SQLite claim (well under a millisecond) to a delivery retried for its whole budget.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// queueBuckets are the histogram boundaries of idem.queue.duration, in seconds: the
// duration buckets, then on to an hour, for a backlog in the broker or the outbox.
var queueBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// MetricsConfig configures [Metrics].
type MetricsConfig struct {
	// MeterProvider makes the instruments. Defaults to otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Consumer names the dedup scope, the consumer attribute. Defaults to the Watermill
	// handler name.
	Consumer string
	// InFlight, when set, tracks the deliveries inside the stack below, for the gauge
	// idem.delivery.oldest_in_flight_age that [ObserveInFlight] registers. Defaults to
	// nil: not tracked.
	InFlight *InFlight
}

// Metrics measures every delivery through the OpenTelemetry metric API, with
// low-cardinality attributes only (consumer, topic, outcome, result, reason; never
// event IDs or payloads):
//
//   - idem.messages: deliveries by outcome, each counted exactly once;
//   - idem.delivery.duration: time from the delivery entering the stack below to its
//     outcome, every attempt and backoff wait included;
//   - idem.handler.duration: time in the handler, per attempt;
//   - idem.claim.duration: time claiming the event in the dedup store, per attempt;
//   - idem.retries: in-process retries;
//   - idem.dead_letters: dead letters stored, by reason;
//   - idem.duplicates.conflicting: duplicates whose payload differs from the
//     processed event's (see DedupConfig.SkipPayloadHash);
//   - idem.queue.duration: time from the message's publish stamp (metadata
//     [PublishedAtKey]) to the delivery entering the stack below, once per delivery.
//
// A message without a stamp, with one that is not RFC 3339, or replayed from the
// dead-letter store records no queue time, and is handled as any other; a stamp
// ahead of the consumer's clock records 0. With MetricsConfig.InFlight, the deliveries
// inside the stack below are tracked for the gauge [ObserveInFlight] registers.
//
// docs/observability.md describes each. The per-attempt durations come from [Dedup],
// the retries from [Retry] and the outcome from [DeadLetter]: place Metrics outside
// them, as the consumer package does (DESIGN §2). It is safe for concurrent use.
func Metrics(cfg MetricsConfig) (message.HandlerMiddleware, error) {
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(instrumentationScope)
	m := &meters{consumer: cfg.Consumer, inFlight: cfg.InFlight, sets: map[attrKey]*attrSets{}}
	if cfg.InFlight != nil && cfg.Consumer != "" {
		m.flights = cfg.InFlight.of(cfg.Consumer) // no lookup per delivery, and the gauge shows 0 from now on
	}
	var err error
	if m.messages, err = meter.Int64Counter("idem.messages",
		metric.WithDescription("Deliveries by how they ended: processed, duplicate, retried, dead-lettered or deferred."),
		metric.WithUnit("{message}")); err != nil {
		return nil, fmt.Errorf("middleware: create idem.messages: %w", err)
	}
	if m.delivery, err = meter.Float64Histogram("idem.delivery.duration",
		metric.WithDescription("Time from a delivery entering idem's stack to its outcome, every attempt and backoff wait included."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, fmt.Errorf("middleware: create idem.delivery.duration: %w", err)
	}
	if m.handler, err = meter.Float64Histogram("idem.handler.duration",
		metric.WithDescription("Time the handler ran, per attempt."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, fmt.Errorf("middleware: create idem.handler.duration: %w", err)
	}
	if m.claim, err = meter.Float64Histogram("idem.claim.duration",
		metric.WithDescription("Time claiming the event in the dedup store (begin and insert), per attempt."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return nil, fmt.Errorf("middleware: create idem.claim.duration: %w", err)
	}
	if m.retries, err = meter.Int64Counter("idem.retries",
		metric.WithDescription("In-process retries: attempts after a failed one within the same delivery."),
		metric.WithUnit("{retry}")); err != nil {
		return nil, fmt.Errorf("middleware: create idem.retries: %w", err)
	}
	if m.deadLetters, err = meter.Int64Counter("idem.dead_letters",
		metric.WithDescription("Dead letters stored, by reason."),
		metric.WithUnit("{dead_letter}")); err != nil {
		return nil, fmt.Errorf("middleware: create idem.dead_letters: %w", err)
	}
	if m.conflicts, err = meter.Int64Counter("idem.duplicates.conflicting",
		metric.WithDescription("Duplicates whose payload differs from the processed event's: a producer reused an event ID for other content."),
		metric.WithUnit("{message}")); err != nil {
		return nil, fmt.Errorf("middleware: create idem.duplicates.conflicting: %w", err)
	}
	if m.queue, err = meter.Float64Histogram("idem.queue.duration",
		metric.WithDescription("Time from a message's publish stamp to a consumer taking it: the outbox, the relay and the broker."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(queueBuckets...)); err != nil {
		return nil, fmt.Errorf("middleware: create idem.queue.duration: %w", err)
	}
	return m.middleware, nil
}

type meters struct {
	consumer    string
	messages    metric.Int64Counter
	delivery    metric.Float64Histogram
	handler     metric.Float64Histogram
	claim       metric.Float64Histogram
	retries     metric.Int64Counter
	deadLetters metric.Int64Counter
	conflicts   metric.Int64Counter
	queue       metric.Float64Histogram
	inFlight    *InFlight
	flights     *flights // inFlight's for consumer, when both are configured

	mu   sync.RWMutex
	sets map[attrKey]*attrSets
}

type attrKey struct{ consumer, topic string }

// attrSets are the measurement options of one consumer and topic, made once: building
// an attribute set, and the variadic slice of options, allocates, and every delivery
// needs several.
type attrSets struct {
	base    measureOpts
	outcome [dedup.Stale + 1]measureOpts
	claim   [claimStale + 1]measureOpts
	handler [2]measureOpts // ok, error

	mu         sync.Mutex
	reason     map[dlq.Reason]measureOpts
	reasonWith func(...attribute.KeyValue) measureOpts
}

// measureOpts holds one attribute set as the options of Add and of Record.
type measureOpts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func (m *meters) attrs(consumer, topic string) *attrSets {
	k := attrKey{consumer, topic}
	m.mu.RLock()
	s := m.sets[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.sets[k]; s != nil {
		return s
	}
	c, t := attribute.String("consumer", consumer), attribute.String("topic", topic)
	with := func(kv ...attribute.KeyValue) measureOpts {
		o := metric.WithAttributeSet(attribute.NewSet(append([]attribute.KeyValue{c, t}, kv...)...))
		return measureOpts{add: []metric.AddOption{o}, record: []metric.RecordOption{o}}
	}
	s = &attrSets{base: with(), reason: map[dlq.Reason]measureOpts{}, reasonWith: with}
	for o := dedup.Processed; o <= dedup.Stale; o++ {
		s.outcome[o] = with(attribute.String("outcome", o.String()))
	}
	for r := claimNew; r <= claimStale; r++ {
		s.claim[r] = with(attribute.String("result", r.String()))
	}
	s.handler[0] = with(attribute.String("result", "ok"))
	s.handler[1] = with(attribute.String("result", "error"))
	m.sets[k] = s
	return s
}

func (s *attrSets) forReason(r dlq.Reason) measureOpts {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.reason[r]
	if !ok {
		o = s.reasonWith(attribute.String("reason", string(r)))
		s.reason[r] = o
	}
	return o
}

// flightsOf returns the in-flight deliveries of consumer, or nil when they are not
// tracked.
func (m *meters) flightsOf(consumer string) *flights {
	if m.flights != nil && consumer == m.consumer {
		return m.flights
	}
	if m.inFlight == nil {
		return nil
	}
	return m.inFlight.of(consumer)
}

func (m *meters) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		d := deliveryOf(msg)
		d.timed = true
		start := time.Now()
		ctx := msg.Context()
		consumer := d.key.Consumer
		if !d.keyed {
			consumer = consumerName(ctx, m.consumer)
		}
		topic := message.SubscribeTopicFromCtx(ctx)
		s := m.attrs(consumer, topic)
		if f := m.flightsOf(consumer); f != nil {
			slot := f.enter(start)
			defer f.leave(slot) // a panic leaves too: the gauge never shows a delivery that is gone
		}
		if queued, ok := queueTime(msg, start); ok {
			m.queue.Record(ctx, queued.Seconds(), s.base.record...)
		}

		produced, err := h(msg)
		took := time.Since(start)

		ctx = msg.Context()
		if d.keyed && d.key.Consumer != consumer {
			s = m.attrs(d.key.Consumer, topic) // the stack below names the consumer otherwise
		}
		outcome := finalOutcome(ctx, d, err)
		m.messages.Add(ctx, 1, s.outcome[outcome].add...)
		m.delivery.Record(ctx, took.Seconds(), s.outcome[outcome].record...)
		for _, t := range d.timings {
			m.claim.Record(ctx, t.claim.Seconds(), s.claim[t.result].record...)
			if t.ran {
				i := 0
				if t.handlerErr {
					i = 1
				}
				m.handler.Record(ctx, t.handler.Seconds(), s.handler[i].record...)
			}
		}
		if d.retries > 0 {
			m.retries.Add(ctx, int64(d.retries), s.base.add...)
		}
		if d.conflict {
			m.conflicts.Add(ctx, 1, s.base.add...)
		}
		if outcome == dedup.DeadLettered && d.letter != nil {
			m.deadLetters.Add(ctx, 1, s.forReason(d.letter.Reason).add...)
		}
		return produced, err
	}
}

// DeadLetterBacklog is what a store implements to feed the gauges
// idem.dead_letters.pending and idem.dead_letters.oldest_age (postgres.Store and
// sqlite.Store do). Implementations must be safe for concurrent use.
type DeadLetterBacklog interface {
	// PendingDeadLetters counts the dead letters waiting for review, and returns when
	// the oldest of them was dead-lettered (zero when there are none).
	PendingDeadLetters(ctx context.Context) (count int64, oldest time.Time, err error)
}

// ObserveDeadLetterBacklog registers the observable gauges idem.dead_letters.pending
// (pending dead letters) and idem.dead_letters.oldest_age (seconds since the oldest
// pending one was dead-lettered, 0 when there is none) on mp (nil:
// otel.GetMeterProvider()), read from b each time the meter provider collects, with
// timeout DefaultBookkeepingTimeout. They have no attributes: the backlog is the
// store's, across consumers. Unregister the returned registration when b goes away;
// the consumer package does this in Consumer.Close.
func ObserveDeadLetterBacklog(mp metric.MeterProvider, b DeadLetterBacklog) (metric.Registration, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(instrumentationScope)
	pending, err := meter.Int64ObservableGauge("idem.dead_letters.pending",
		metric.WithDescription("Dead letters waiting for review."),
		metric.WithUnit("{dead_letter}"))
	if err != nil {
		return nil, fmt.Errorf("middleware: create idem.dead_letters.pending: %w", err)
	}
	age, err := meter.Float64ObservableGauge("idem.dead_letters.oldest_age",
		metric.WithDescription("Time since the oldest pending dead letter was dead-lettered; 0 when none is pending."),
		metric.WithUnit("s"))
	if err != nil {
		return nil, fmt.Errorf("middleware: create idem.dead_letters.oldest_age: %w", err)
	}
	return meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, DefaultBookkeepingTimeout)
		defer cancel()
		n, oldest, err := b.PendingDeadLetters(ctx)
		if err != nil {
			return fmt.Errorf("middleware: observe the dead-letter backlog: %w", err)
		}
		o.ObserveInt64(pending, n)
		var seconds float64
		if n > 0 && !oldest.IsZero() {
			seconds = max(time.Since(oldest).Seconds(), 0)
		}
		o.ObserveFloat64(age, seconds)
		return nil
	}, pending, age)
}

// InFlight tracks the deliveries inside the stacks of the Metrics middleware it is
// given to (MetricsConfig.InFlight), per consumer, for the gauge
// idem.delivery.oldest_in_flight_age that [ObserveInFlight] registers. Share one
// among the handlers of a service. Its zero value is ready to use, and it is safe for
// concurrent use.
type InFlight struct {
	mu        sync.RWMutex
	consumers map[string]*flights
}

// of returns the in-flight deliveries of consumer, made on first use.
func (f *InFlight) of(consumer string) *flights {
	f.mu.RLock()
	fl := f.consumers[consumer]
	f.mu.RUnlock()
	if fl != nil {
		return fl
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl = f.consumers[consumer]; fl != nil {
		return fl
	}
	if f.consumers == nil {
		f.consumers = map[string]*flights{}
	}
	fl = &flights{attrs: []metric.ObserveOption{
		metric.WithAttributeSet(attribute.NewSet(attribute.String("consumer", consumer))),
	}}
	f.consumers[consumer] = fl
	return fl
}

// flights are one consumer's deliveries in flight: each holds a slot with the time it
// entered, and frees it when it leaves. Entering and leaving are a short critical
// section without allocation (once the slots have grown to the consumer's
// concurrency); the oldest is found by a scan of the slots, at collection time.
type flights struct {
	attrs []metric.ObserveOption // consumer

	mu    sync.Mutex
	since []time.Time // when each slot's delivery entered; zero: free
	free  []int
}

func (f *flights) enter(now time.Time) int {
	f.mu.Lock()
	var i int
	if n := len(f.free); n > 0 {
		i = f.free[n-1]
		f.free = f.free[:n-1]
	} else {
		i = len(f.since)
		f.since = append(f.since, time.Time{})
	}
	f.since[i] = now
	f.mu.Unlock()
	return i
}

func (f *flights) leave(i int) {
	f.mu.Lock()
	f.since[i] = time.Time{}
	f.free = append(f.free, i)
	f.mu.Unlock()
}

// oldest returns when the oldest delivery in flight entered; ok is false when none is.
func (f *flights) oldest() (t time.Time, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.since {
		if !s.IsZero() && (t.IsZero() || s.Before(t)) {
			t = s
		}
	}
	return t, !t.IsZero()
}

// ObserveInFlight registers the observable gauge idem.delivery.oldest_in_flight_age on
// mp (nil: otel.GetMeterProvider()), read from f each time the meter provider
// collects: per consumer (attribute consumer), the seconds the oldest delivery now
// inside the stack of a Metrics middleware that f tracks (MetricsConfig.InFlight) has
// been in it, 0 when there is none. A handler that hangs shows as an age that keeps
// growing. A consumer is observed from the moment a Metrics middleware named for it
// (MetricsConfig.Consumer) is made, or else from its first delivery. Unregister the
// returned registration when the handlers go away.
func ObserveInFlight(mp metric.MeterProvider, f *InFlight) (metric.Registration, error) {
	if f == nil {
		return nil, errors.New("middleware: ObserveInFlight needs an InFlight, got nil")
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(instrumentationScope)
	age, err := meter.Float64ObservableGauge("idem.delivery.oldest_in_flight_age",
		metric.WithDescription("Time the oldest delivery now inside idem's stack has been in it; 0 when none is."),
		metric.WithUnit("s"))
	if err != nil {
		return nil, fmt.Errorf("middleware: create idem.delivery.oldest_in_flight_age: %w", err)
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		f.mu.RLock()
		defer f.mu.RUnlock()
		for _, fl := range f.consumers {
			var seconds float64
			if oldest, ok := fl.oldest(); ok {
				seconds = max(time.Since(oldest).Seconds(), 0)
			}
			o.ObserveFloat64(age, seconds, fl.attrs...)
		}
		return nil
	}, age)
}
