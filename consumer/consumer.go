package consumer

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

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
	// message by itself (watermill-sql AckDeadline, NATS AckWait, Redis MaxIdleTime).
	// In-process retrying stops before it, and a Retry.MaxElapsedTime longer than it
	// is refused. Defaults to 0: no such deadline.
	AckDeadline time.Duration
	// BookkeepingTimeout bounds the short writes idem makes when an attempt fails
	// (the attempt count, the dead letter); they run detached from the delivery's
	// cancellation. Defaults to middleware.DefaultBookkeepingTimeout.
	BookkeepingTimeout time.Duration
	// CrashGuard, when above 0, is how many deliveries of one event may start and
	// never finish (the process crashed, was killed, or hung) before the event is
	// dead-lettered as crash-looped without running the handler again. It costs one
	// short write per delivery; the store must implement dedup.StartRecorder (both
	// postgres.Store and sqlite.Store do). Defaults to 0: off.
	CrashGuard int
	// Alerts is told of every dead letter once it committed: use a *dlq.Dispatcher,
	// which aggregates alerts per failure group and never blocks consumption, and
	// close it on shutdown. Defaults to nil: dead letters are logged at error level
	// ("idem: message dead-lettered") and nothing else.
	Alerts middleware.Notifier
	// DeadLetterTopic, when set, publishes every dead letter to a dead-letter topic
	// after it committed: use a *dlq.TopicPublisher, and Run it alongside the router.
	// Defaults to nil: dead letters stay in the store only.
	DeadLetterTopic middleware.Notifier
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Retry = c.Retry.WithDefaults()
	if c.Retry.Classify == nil {
		if cl, ok := c.Store.(interface{ Classify(error) retry.Class }); ok {
			c.Retry.Classify = cl.Classify
		}
	}
	c.BookkeepingTimeout = cmp.Or(c.BookkeepingTimeout, middleware.DefaultBookkeepingTimeout)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return c
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
	if c.AckDeadline > 0 && (c.Retry.MaxElapsedTime < 0 || c.Retry.MaxElapsedTime >= c.AckDeadline) {
		budget := "unbounded (-1)"
		if c.Retry.MaxElapsedTime >= 0 {
			budget = c.Retry.MaxElapsedTime.String()
		}
		return fmt.Errorf("consumer: Config.Retry.MaxElapsedTime %s must be shorter than Config.AckDeadline %s: "+
			"the broker would redeliver the message while it is still being retried; lower Retry.MaxElapsedTime or raise the subscriber's ack deadline", budget, c.AckDeadline)
	}
	if c.CrashGuard < 0 {
		return fmt.Errorf("consumer: Config.CrashGuard must not be negative, got %d", c.CrashGuard)
	}
	if _, ok := c.Store.(dedup.StartRecorder); c.CrashGuard > 0 && !ok {
		return fmt.Errorf("consumer: Config.CrashGuard needs a store that counts started deliveries (dedup.StartRecorder); %T does not", c.Store)
	}
	if c.BookkeepingTimeout < 0 {
		return fmt.Errorf("consumer: Config.BookkeepingTimeout must not be negative, got %s", c.BookkeepingTimeout)
	}
	return nil
}

// Consumer wraps Watermill handlers in idem's middleware stack, always in this order,
// outermost first: Correlation, DeadLetter, Retry, Dedup, Recover, then the handler.
// Each handler's name is its consumer name: the dedup scope of its events, which must
// be stable across deploys and never shared by two handlers. A Consumer is safe for
// concurrent use; one Consumer serves any number of handlers.
type Consumer struct {
	cfg Config
}

// New checks cfg and returns a Consumer. It runs no SQL.
func New(cfg Config) (*Consumer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Consumer{cfg: cfg}, nil
}

// Wrap returns h wrapped in the whole stack, with name as its consumer name. Use it to
// register handlers on a router yourself, under the same name.
func (c *Consumer) Wrap(name string, h message.HandlerFunc) message.HandlerFunc {
	cfg := c.cfg
	// The constructors cannot fail here: New validated everything they check.
	deadLetter, _ := middleware.DeadLetter(middleware.DeadLetterConfig{
		Store:     cfg.Store,
		Policy:    cfg.Retry,
		Consumer:  name,
		KeyFunc:   cfg.KeyFunc,
		Timeout:   cfg.BookkeepingTimeout,
		Notifiers: cfg.notifiers(),
		Logger:    cfg.Logger,
	})
	retrying, _ := middleware.Retry(middleware.RetryConfig{
		Policy:      cfg.Retry,
		AckDeadline: cfg.AckDeadline,
		Logger:      cfg.Logger,
	})
	dedupe, _ := middleware.Dedup(middleware.DedupConfig{
		Store:    cfg.Store,
		Consumer: name,
		KeyFunc:  cfg.KeyFunc,
		Classify: cfg.Retry.Class,
		Timeout:  cfg.BookkeepingTimeout,
		Logger:   cfg.Logger,
	})
	stack := []message.HandlerMiddleware{middleware.Correlation, deadLetter}
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

// WrapConsumer is [Consumer.Wrap] for a handler that produces no messages.
func (c *Consumer) WrapConsumer(name string, h message.NoPublishHandlerFunc) message.NoPublishHandlerFunc {
	wrapped := c.Wrap(name, func(msg *message.Message) ([]*message.Message, error) { return nil, h(msg) })
	return func(msg *message.Message) error {
		_, err := wrapped(msg)
		return err
	}
}

// AddHandler registers h on r like message.Router.AddHandler, wrapped in the stack
// with name as its consumer name. The messages h returns are published to
// publishTopic after the event's transaction committed, with the correlation ID and
// causation ID set.
func (c *Consumer) AddHandler(r *message.Router, name, subscribeTopic string, sub message.Subscriber,
	publishTopic string, pub message.Publisher, h message.HandlerFunc,
) *message.Handler {
	return r.AddHandler(name, subscribeTopic, sub, publishTopic, pub, c.Wrap(name, h))
}

// AddConsumerHandler registers h on r like message.Router.AddConsumerHandler, wrapped
// in the stack with name as its consumer name.
func (c *Consumer) AddConsumerHandler(r *message.Router, name, topic string, sub message.Subscriber,
	h message.NoPublishHandlerFunc,
) *message.Handler {
	return r.AddConsumerHandler(name, topic, sub, c.WrapConsumer(name, h))
}
