package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// Store is what a consumer needs from its database: claiming events and counting
// attempts (dedup.Store) and keeping dead letters (dlq.Store). postgres.Store and
// sqlite.Store implement it.
type Store interface {
	dedup.Store
	dlq.Store
}

// Outbox writes messages into a transactional outbox inside the transaction that ctx
// carries, so that they are published if and only if it commits. outbox.Writer
// implements it.
type Outbox interface {
	WriteTx(ctx context.Context, topic string, msgs ...*message.Message) error
}

// Config configures a [Consumer].
type Config struct {
	// Store claims events, counts failed attempts and keeps dead letters. Required.
	// When it has a method Classify(error) retry.Class (as postgres.Store does), that
	// method classifies the database's errors unless Retry.Classify is set.
	Store Store
	// KeyFunc extracts each message's event ID. Defaults to reading metadata
	// "event_id" (dedup.FromMetadata(dedup.MetadataKey)).
	KeyFunc dedup.KeyFunc
	// Retry bounds and paces attempts; its zero value is ready to use (5 attempts,
	// backoff from 100ms to 10s with full jitter, 30s of in-process retrying per
	// delivery).
	Retry retry.Policy
	// AckDeadline is how long the subscriber waits for an ack before it redelivers a
	// message by itself: watermill-sql SubscriberConfig.AckDeadline (30s unless set;
	// postgres.SubscriberAckDeadline reads it), NATS JetStream consumer AckWait, Redis
	// Streams MaxIdleTime. In-process retrying stops before it. When it is set and
	// Retry.MaxElapsedTime is not, MaxElapsedTime defaults to half of it; a retry
	// budget that does not fit in it is refused (see HandlerTimeout). Defaults to 0:
	// no such deadline.
	AckDeadline time.Duration
	// HandlerTimeout bounds each attempt of the handler: its context ends after it, and
	// the attempt counts as a failure, so a handler that hangs is retried and in the
	// end dead-lettered instead of being redelivered forever. With AckDeadline set,
	// MaxAttempts handler timeouts plus the backoff waits must fit in it. Defaults to
	// 0: no bound of its own.
	HandlerTimeout time.Duration
	// BookkeepingTimeout bounds the short writes idem makes when an attempt fails
	// (the attempt count, the dead letter); they run detached from the delivery's
	// cancellation. Defaults to middleware.DefaultBookkeepingTimeout.
	BookkeepingTimeout time.Duration
	// Batch turns on group commit: the deliveries of a handler that are in flight at
	// the same time share one transaction and one COMMIT, each event in a savepoint
	// of its own, acked only after the COMMIT (see middleware.BatchConfig for how
	// batches form and what a failure does). Set Batch.MaxSize to turn it on; the
	// store must implement dedup.BatchRunner (both postgres.Store and sqlite.Store
	// do). Batching pays when many deliveries are in flight: see docs/performance.md
	// for how to get them on each transport. Defaults to off.
	Batch middleware.BatchConfig
	// Ordering keeps the events of one entity in order: each event names its entity
	// and its sequence number (metadata entity_id and entity_seq by default), the
	// store keeps each entity's high-water mark in the transaction of the claim, an
	// event at or below it is acked without running the handler (outcome stale), and
	// under the strict gap policy an event beyond the next one expected waits (see
	// middleware.OrderingConfig and docs/ordering.md). Set Ordering.Enabled to turn
	// it on; the store must implement dedup.Sequencer (both postgres.Store and
	// sqlite.Store do), and it does not combine with Batch. Ordering.Quarantine
	// parks an entity's later events behind its dead letter until the dead letter is
	// reviewed; it needs DelayedRetry, which publishes them again when released.
	// Defaults to off.
	Ordering middleware.OrderingConfig
	// DelayedRetry turns on delayed retries: a failing event with attempts left is
	// parked in the store for its next attempt and acked, instead of waiting in-process
	// or being handed back to the broker, so that it never blocks the messages behind
	// it. Set DelayedRetry.Publisher to turn it on, and run [Consumer.RunDelayedRetries]
	// to publish parked events again when due. Defaults to off.
	DelayedRetry DelayedRetryConfig
	// SkipPayloadHash turns off keeping the SHA-256 of each processed event's payload
	// with its claim. By default it is kept, and a duplicate whose payload differs (a
	// producer that reused an event ID for other content) is skipped all the same but
	// logged at warning level, with IDs and hashes only, counted
	// (idem.duplicates.conflicting) and marked on its span. It costs a hash of the
	// payload and 32 bytes per processed row. Defaults to false.
	SkipPayloadHash bool
	// CrashGuard, when above 0, is how many consumer processes may die (crashed,
	// killed) with a delivery of one event started and not finished before the event
	// is dead-lettered as crash-looped without running the handler again. Deliveries
	// of one event that run at the same time, in this process or in other replicas,
	// are not crashes of each other; a handler that hangs is HandlerTimeout's to end.
	// It costs one short write per delivery; the store must implement
	// dedup.StartRecorder (both postgres.Store and sqlite.Store do; a postgres.Store
	// opens one connection of its own to show its process alive, see
	// postgres.Store.HoldLive). Defaults to 0: off.
	CrashGuard int
	// Outbox, when set, receives the messages that handlers registered with
	// AddHandler return, inside the attempt's transaction: they are published if and
	// only if the event's effects commit (outbox.Writer writes them to the
	// transactional outbox on PostgreSQL). Defaults to nil: AddHandler publishes them
	// through its publisher inside the attempt, before the commit (at least once;
	// a commit that fails after the publish leaves a duplicate, which carries the same
	// derived event ID).
	Outbox Outbox
	// Alerts is told of every dead letter once it committed: use a *dlq.Dispatcher,
	// which aggregates alerts per failure group and never blocks consumption, and
	// close it on shutdown. Defaults to nil: dead letters are logged at error level
	// ("idem: message dead-lettered") and nothing else.
	Alerts middleware.Notifier
	// DeadLetterTopic, when set, publishes every dead letter to a dead-letter topic
	// after it committed: use a *dlq.TopicPublisher, and Run it alongside the router.
	// Defaults to nil: dead letters stay in the store only.
	DeadLetterTopic middleware.Notifier
	// TracerProvider makes one consumer span per delivery, and the producer spans of
	// the messages handlers return (see middleware.Trace and middleware.Publisher).
	// Defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// MeterProvider receives idem's metrics (see middleware.Metrics), and, when the
	// store can count its pending dead letters (postgres.Store and sqlite.Store can),
	// the dead-letter backlog gauges. Defaults to otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Propagator reads and writes the trace context in message metadata. Defaults to
	// otel.GetTextMapPropagator(), falling back on W3C Trace Context (traceparent,
	// tracestate) while the global propagator propagates nothing.
	Propagator propagation.TextMapPropagator
	// MessagingSystem is the messaging.system attribute of spans: the transport
	// ("kafka", "rabbitmq", "nats", "redis", "postgresql", …). Defaults to
	// middleware.DefaultMessagingSystem ("watermill").
	MessagingSystem string
	// Logger defaults to slog.Default(). Wrap its handler in middleware.LogHandler to
	// give every log line the correlation ID, event and trace of its message.
	Logger *slog.Logger
}

// DelayedRetryConfig configures delayed retries (Config.DelayedRetry).
type DelayedRetryConfig struct {
	// Publisher publishes a parked event again, when due, to the topic it was
	// consumed from: the transport's publisher, or one that writes to the outbox.
	// Setting it turns delayed retries on; the store must implement dedup.Parker
	// (both postgres.Store and sqlite.Store do).
	Publisher message.Publisher
	// AttemptsPerDelivery is how many attempts one delivery makes in-process before
	// the event is parked. Defaults to 1: parked on its first failure, its backoff
	// spent in the store rather than in the consumer.
	AttemptsPerDelivery int
	// MaxWait is the longest backoff waited in-process between those attempts (a
	// retry.After longer than it parks the event at once). Defaults to 0: any, within
	// the other bounds.
	MaxWait time.Duration
	// Interval is how often RunDelayedRetries looks for due events. Defaults to
	// middleware.DefaultRedeliverInterval.
	Interval time.Duration
}

func (c Config) withDefaults() Config {
	if c.AckDeadline > 0 && c.Retry.MaxElapsedTime == 0 {
		c.Retry.MaxElapsedTime = c.AckDeadline / 2
	}
	c.Retry = c.Retry.WithDefaults()
	if c.Retry.Classify == nil {
		if cl, ok := c.Store.(interface{ Classify(error) retry.Class }); ok {
			c.Retry.Classify = cl.Classify
		}
	}
	c.BookkeepingTimeout = cmp.Or(c.BookkeepingTimeout, middleware.DefaultBookkeepingTimeout)
	if c.DelayedRetry.Publisher != nil {
		c.DelayedRetry.AttemptsPerDelivery = cmp.Or(c.DelayedRetry.AttemptsPerDelivery, 1)
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return c
}

// retryBudget is the longest one delivery can spend in in-process retrying: the backoff
// waits (each at its cap), bounded by MaxElapsedTime, plus a HandlerTimeout per attempt.
func retryBudget(p retry.Policy, handlerTimeout time.Duration, perDelivery int) (time.Duration, string) {
	if perDelivery > 0 {
		p.MaxAttempts = min(p.MaxAttempts, perDelivery) // delayed retries park the rest
	}
	var waits time.Duration
	for i := 1; i < p.MaxAttempts; i++ {
		waits += p.Backoff(i)
	}
	parts := fmt.Sprintf("backoff waits up to %s", waits)
	if p.MaxElapsedTime >= 0 && p.MaxElapsedTime < waits {
		waits = p.MaxElapsedTime
		parts = fmt.Sprintf("Retry.MaxElapsedTime %s", p.MaxElapsedTime)
	} else if p.MaxElapsedTime < 0 {
		parts += ", Retry.MaxElapsedTime unbounded (-1)"
	}
	if handlerTimeout <= 0 {
		return waits, parts + ", no HandlerTimeout"
	}
	attempts := time.Duration(p.MaxAttempts) * handlerTimeout
	return waits + attempts, fmt.Sprintf("%s + %d attempts × HandlerTimeout %s", parts, p.MaxAttempts, handlerTimeout)
}

func (c Config) notifiers() []middleware.Notifier {
	var ns []middleware.Notifier
	for _, n := range []middleware.Notifier{c.Alerts, c.DeadLetterTopic} {
		if n != nil {
			ns = append(ns, n)
		}
	}
	return ns
}

func (c Config) validate() error {
	if c.Store == nil {
		return errors.New("consumer: Config.Store is required (postgres.New or sqlite.Open)")
	}
	if err := c.Retry.Validate(); err != nil {
		return fmt.Errorf("consumer: Config.Retry: %w", err)
	}
	if c.AckDeadline < 0 {
		return fmt.Errorf("consumer: Config.AckDeadline must not be negative, got %s", c.AckDeadline)
	}
	if c.HandlerTimeout < 0 {
		return fmt.Errorf("consumer: Config.HandlerTimeout must not be negative, got %s", c.HandlerTimeout)
	}
	if c.AckDeadline > 0 {
		if budget, parts := retryBudget(c.Retry, c.HandlerTimeout, c.DelayedRetry.AttemptsPerDelivery); budget >= c.AckDeadline {
			return fmt.Errorf("consumer: the retry budget of one delivery, %s (%s), is not shorter than Config.AckDeadline %s: "+
				"the broker would redeliver the message while it is still being retried; lower Config.Retry.MaxElapsedTime, "+
				"Config.Retry.MaxAttempts or Config.HandlerTimeout, or raise the subscriber's ack deadline "+
				"(watermill-sql SubscriberConfig.AckDeadline, the NATS JetStream consumer's AckWait, Redis MaxIdleTime) and Config.AckDeadline with it",
				budget, parts, c.AckDeadline)
		}
	}
	if c.CrashGuard < 0 {
		return fmt.Errorf("consumer: Config.CrashGuard must not be negative, got %d", c.CrashGuard)
	}
	if _, ok := c.Store.(dedup.StartRecorder); c.CrashGuard > 0 && !ok {
		return fmt.Errorf("consumer: Config.CrashGuard needs a store that counts started deliveries (dedup.StartRecorder); %T does not", c.Store)
	}
	if err := c.Batch.Validate(); err != nil {
		return fmt.Errorf("consumer: Config.Batch: %w", err)
	}
	if _, ok := c.Store.(dedup.BatchRunner); c.Batch.MaxSize > 0 && !ok {
		return fmt.Errorf("consumer: Config.Batch needs a store that runs batches (dedup.BatchRunner); %T does not", c.Store)
	}
	if err := c.Ordering.Validate(); err != nil {
		return fmt.Errorf("consumer: Config.Ordering: %w", err)
	}
	if c.Ordering.Enabled {
		if _, ok := c.Store.(dedup.Sequencer); !ok {
			return fmt.Errorf("consumer: Config.Ordering needs a store that orders events (dedup.Sequencer); %T does not", c.Store)
		}
		if c.Batch.MaxSize > 0 {
			return errors.New("consumer: Config.Ordering does not combine with Config.Batch: a batch runs the events of one entity side by side; turn one of them off")
		}
		if _, ok := c.Store.(dedup.Quarantiner); c.Ordering.Quarantine && !ok {
			return fmt.Errorf("consumer: Config.Ordering.Quarantine needs a store that quarantines entities (dedup.Quarantiner); %T does not", c.Store)
		}
		if c.Ordering.Quarantine && c.DelayedRetry.Publisher == nil {
			return errors.New("consumer: Config.Ordering.Quarantine needs Config.DelayedRetry.Publisher: released events are published again by RunDelayedRetries")
		}
	}
	if dr := c.DelayedRetry; dr.Publisher != nil {
		if _, ok := c.Store.(dedup.Parker); !ok {
			return fmt.Errorf("consumer: Config.DelayedRetry needs a store that parks messages (dedup.Parker); %T does not", c.Store)
		}
		if dr.AttemptsPerDelivery < 0 || dr.MaxWait < 0 || dr.Interval < 0 {
			return fmt.Errorf("consumer: Config.DelayedRetry: AttemptsPerDelivery (%d), MaxWait (%s) and Interval (%s) must not be negative",
				dr.AttemptsPerDelivery, dr.MaxWait, dr.Interval)
		}
	} else if c.DelayedRetry != (DelayedRetryConfig{}) {
		return errors.New("consumer: Config.DelayedRetry is set but its Publisher is not: set DelayedRetry.Publisher to turn delayed retries on")
	}
	if c.BookkeepingTimeout < 0 {
		return fmt.Errorf("consumer: Config.BookkeepingTimeout must not be negative, got %s", c.BookkeepingTimeout)
	}
	return nil
}

// Consumer wraps Watermill handlers in idem's middleware stack, always in this order,
// outermost first: Correlation, Trace, Metrics, DeadLetter, CrashGuard (when
// Config.CrashGuard is set), Retry, Dedup, Recover, then the handler. Each handler's
// name is its consumer name: the dedup scope of its events, which must
// be stable across deploys and never shared by two handlers. A Consumer is safe for
// concurrent use; one Consumer serves any number of handlers.
type Consumer struct {
	cfg       Config
	backlog   metric.Registration // the dead-letter backlog gauges, or nil
	inFlight  *middleware.InFlight
	flights   metric.Registration // the in-flight gauge
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and returns a Consumer. It runs no SQL. When cfg.Store can count its
// pending dead letters (middleware.DeadLetterBacklog), New registers the gauges
// idem.dead_letters.pending and idem.dead_letters.oldest_age on cfg.MeterProvider,
// read from the store at each collection. It also registers the gauge
// idem.delivery.oldest_in_flight_age, the age of the oldest delivery inside the stack of
// each of its handlers. [Consumer.Close] unregisters them.
func New(cfg Config) (*Consumer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: cfg.MeterProvider}); err != nil {
		return nil, fmt.Errorf("consumer: Config.MeterProvider: %w", err)
	}
	c := &Consumer{cfg: cfg, inFlight: &middleware.InFlight{}}
	flights, err := middleware.ObserveInFlight(cfg.MeterProvider, c.inFlight)
	if err != nil {
		return nil, fmt.Errorf("consumer: Config.MeterProvider: %w", err)
	}
	c.flights = flights
	if b, ok := cfg.Store.(middleware.DeadLetterBacklog); ok {
		reg, err := middleware.ObserveDeadLetterBacklog(cfg.MeterProvider, b)
		if err != nil {
			_ = flights.Unregister()
			return nil, fmt.Errorf("consumer: Config.MeterProvider: %w", err)
		}
		c.backlog = reg
	}
	return c, nil
}

// Close unregisters the gauges New registered (the dead-letter backlog, the oldest
// delivery in flight). The Consumer's handlers keep working. Close is safe to call
// more than once.
func (c *Consumer) Close() error {
	c.closeOnce.Do(func() {
		if err := c.flights.Unregister(); err != nil {
			c.closeErr = fmt.Errorf("consumer: unregister the in-flight gauge: %w", err)
		}
		if c.backlog == nil {
			return
		}
		if err := c.backlog.Unregister(); err != nil {
			c.closeErr = errors.Join(c.closeErr, fmt.Errorf("consumer: unregister the dead-letter backlog gauges: %w", err))
		}
	})
	return c.closeErr
}

// Publisher returns pub decorated with middleware.NewPublisher on the consumer's
// tracer provider, propagator and messaging system: every message published through
// it carries a correlation ID, a causation ID when published while handling an event,
// and the trace context of a producer span. Publish from a handler with
// PublishContext(msg.Context(), …).
func (c *Consumer) Publisher(pub message.Publisher) *middleware.Publisher {
	if p, ok := pub.(*middleware.Publisher); ok {
		return p
	}
	p, _ := middleware.NewPublisher(pub, middleware.PublisherConfig{
		TracerProvider: c.cfg.TracerProvider,
		Propagator:     c.cfg.Propagator,
		System:         c.cfg.MessagingSystem,
	}) // cannot fail: pub is not nil here
	return p
}

// Wrap returns h wrapped in the whole stack, with name as its consumer name. Use it to
// register handlers on a router yourself, under the same name.
//
// Wrap, and likewise WrapConsumer, AddHandler and AddConsumerHandler, panics with an
// error wrapping [dedup.ErrInvalidConsumer] when name is not a valid consumer name (see
// dedup.ValidateConsumer: 1 to 200 bytes of valid UTF-8, not only white space,
// without NUL or control characters), as message.Router.AddHandler panics on a
// duplicate name: no event of such a consumer could ever be stored, and a programming
// error is best found at start-up. Check a name that comes from configuration with
// dedup.ValidateConsumer first.
func (c *Consumer) Wrap(name string, h message.HandlerFunc) message.HandlerFunc {
	return c.wrap(name, h, nil)
}

func (c *Consumer) wrap(name string, h message.HandlerFunc, produce func(context.Context, []*message.Message) error) message.HandlerFunc {
	if err := dedup.ValidateConsumer(name); err != nil {
		panic(fmt.Errorf("consumer: handler name: %w", err))
	}
	cfg := c.cfg
	// The constructors cannot fail here: New validated everything they check.
	deadLetter, _ := middleware.DeadLetter(middleware.DeadLetterConfig{
		Store:     cfg.Store,
		Policy:    cfg.Retry,
		Consumer:  name,
		KeyFunc:   cfg.KeyFunc,
		Timeout:   cfg.BookkeepingTimeout,
		Notifiers: cfg.notifiers(),
		Parker:    c.parker(),
		Ordering:  cfg.Ordering,
		Logger:    cfg.Logger,
	})
	retrying, _ := middleware.Retry(middleware.RetryConfig{
		Policy:                 cfg.Retry,
		AckDeadline:            cfg.AckDeadline,
		AttemptTimeout:         cfg.HandlerTimeout,
		MaxAttemptsPerDelivery: cfg.DelayedRetry.AttemptsPerDelivery,
		MaxWait:                cfg.DelayedRetry.MaxWait,
		Logger:                 cfg.Logger,
	})
	dedupe, _ := middleware.Dedup(middleware.DedupConfig{
		Store:           cfg.Store,
		Consumer:        name,
		KeyFunc:         cfg.KeyFunc,
		Classify:        cfg.Retry.Class,
		Timeout:         cfg.BookkeepingTimeout,
		Produce:         produce,
		SkipPayloadHash: cfg.SkipPayloadHash,
		Batch:           cfg.Batch,
		Ordering:        cfg.Ordering,
		TracerProvider:  cfg.TracerProvider,
		MeterProvider:   cfg.MeterProvider,
		Logger:          cfg.Logger,
	})
	tracing, _ := middleware.Trace(middleware.TraceConfig{
		TracerProvider: cfg.TracerProvider,
		Propagator:     cfg.Propagator,
		System:         cfg.MessagingSystem,
		Consumer:       name,
	})
	stack := []message.HandlerMiddleware{middleware.Correlation, tracing}
	// New made the same instruments on the same provider: this cannot fail.
	if metrics, err := middleware.Metrics(middleware.MetricsConfig{MeterProvider: cfg.MeterProvider, Consumer: name, InFlight: c.inFlight}); err == nil {
		stack = append(stack, metrics)
	}
	stack = append(stack, deadLetter)
	if cfg.CrashGuard > 0 {
		guard, _ := middleware.CrashGuard(middleware.CrashGuardConfig{
			Store:      cfg.Store.(dedup.StartRecorder),
			Deliveries: cfg.CrashGuard,
			Consumer:   name,
			KeyFunc:    cfg.KeyFunc,
			Timeout:    cfg.BookkeepingTimeout,
			Logger:     cfg.Logger,
		})
		stack = append(stack, guard)
	}
	stack = append(stack, retrying, dedupe, middleware.Recover)
	for i := len(stack) - 1; i >= 0; i-- {
		h = stack[i](h)
	}
	return h
}

// parker is the store as a dedup.Parker when delayed retries are on, else nil.
func (c *Consumer) parker() dedup.Parker {
	if c.cfg.DelayedRetry.Publisher == nil {
		return nil
	}
	return c.cfg.Store.(dedup.Parker)
}

// ErrNoDelayedRetry is returned by [Consumer.RunDelayedRetries] when
// Config.DelayedRetry is off.
var ErrNoDelayedRetry = errors.New("consumer: delayed retries are off: set Config.DelayedRetry.Publisher")

// RunDelayedRetries publishes the events parked for a delayed retry again when due,
// through Config.DelayedRetry.Publisher, until ctx ends (see middleware.Redeliverer).
// Run it beside the router, in one or more of the consumer's processes: they share
// the work. It returns nil when ctx ends.
func (c *Consumer) RunDelayedRetries(ctx context.Context) error {
	if c.cfg.DelayedRetry.Publisher == nil {
		return ErrNoDelayedRetry
	}
	r, err := middleware.NewRedeliverer(middleware.RedelivererConfig{
		Store:     c.parker(),
		Publisher: c.cfg.DelayedRetry.Publisher,
		Interval:  c.cfg.DelayedRetry.Interval,
		Logger:    c.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	return r.Run(ctx)
}

// WrapConsumer is [Consumer.Wrap] for a handler that produces no messages.
func (c *Consumer) WrapConsumer(name string, h message.NoPublishHandlerFunc) message.NoPublishHandlerFunc {
	wrapped := c.Wrap(name, func(msg *message.Message) ([]*message.Message, error) { return nil, h(msg) })
	return func(msg *message.Message) error {
		_, err := wrapped(msg)
		return err
	}
}

// AddHandler registers h on r like message.Router.AddHandler, wrapped in the stack
// with name as its consumer name. The messages h returns never wait for the router:
// with Config.Outbox they are written to the outbox in the attempt's transaction
// (published iff it commits); without, they are published to publishTopic through
// pub inside the attempt, before the commit (never lost; a failed commit after the
// publish leaves a duplicate with the same derived event ID). Either way each gets a
// correlation ID, a causation ID (the consumed event's ID), an event ID when it has
// none, and a producer span, a child of the delivery's consumer span.
func (c *Consumer) AddHandler(r *message.Router, name, subscribeTopic string, sub message.Subscriber,
	publishTopic string, pub message.Publisher, h message.HandlerFunc,
) *message.Handler {
	var out *middleware.Publisher
	switch {
	case c.cfg.Outbox != nil:
		out = c.Publisher(outboxPublisher{c.cfg.Outbox})
	case pub != nil:
		out = c.Publisher(pub)
	}
	var produce func(context.Context, []*message.Message) error
	if out != nil {
		produce = func(ctx context.Context, msgs []*message.Message) error {
			for _, m := range msgs {
				m.SetContext(ctx) // the outbox finds the transaction there
			}
			err := out.PublishContext(ctx, publishTopic, msgs...)
			if err != nil && c.cfg.Outbox == nil {
				// The broker is down: not the message's fault.
				return retry.Infrastructure(fmt.Errorf("consumer: publish %d produced messages to %s: %w", len(msgs), publishTopic, err))
			}
			return err
		}
	}
	return r.AddHandler(name, subscribeTopic, sub, publishTopic, pub, c.wrap(name, h, produce))
}

// outboxPublisher writes through an Outbox, with the transaction of the first
// message's context.
type outboxPublisher struct{ outbox Outbox }

func (p outboxPublisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return p.outbox.WriteTx(msgs[0].Context(), topic, msgs...)
}

func (p outboxPublisher) Close() error { return nil }

// AddConsumerHandler registers h on r like message.Router.AddConsumerHandler, wrapped
// in the stack with name as its consumer name.
func (c *Consumer) AddConsumerHandler(r *message.Router, name, topic string, sub message.Subscriber,
	h message.NoPublishHandlerFunc,
) *message.Handler {
	return r.AddConsumerHandler(name, topic, sub, c.WrapConsumer(name, h))
}
