package middleware

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
)

// DefaultRedeliverInterval is how often a [Redeliverer] looks for parked messages that
// are due, by default.
const DefaultRedeliverInterval = time.Second

// DefaultRedeliverBatch is how many due messages a Redeliverer takes at once, by
// default.
const DefaultRedeliverBatch = 100

// RedelivererConfig configures [NewRedeliverer].
type RedelivererConfig struct {
	// Store keeps the parked messages. Required.
	Store dedup.Parker
	// Publisher publishes each due message to the topic it was consumed from: the
	// transport's publisher, or one that writes to a transactional outbox. Required.
	Publisher message.Publisher
	// Interval is how often it looks for due messages when none were due. Defaults to
	// DefaultRedeliverInterval.
	Interval time.Duration
	// BatchSize is how many due messages it takes at once. Defaults to
	// DefaultRedeliverBatch.
	BatchSize int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Redeliverer publishes parked messages again when their delayed retry is due (see
// DeadLetterConfig.Parker): with their payload and metadata as they came, the event ID
// included, and a new message UUID (some transports drop a UUID they have seen). A
// message is removed from the store only once its publish succeeded: one whose
// publish fails is tried again on the next pass, and one published twice (a crash
// between the publish and the removal) is a duplicate the consumer skips. Any number
// of Redeliverers may share one store. It is safe for concurrent use.
type Redeliverer struct {
	cfg RedelivererConfig
}

// NewRedeliverer checks cfg and returns a Redeliverer; call its Run.
func NewRedeliverer(cfg RedelivererConfig) (*Redeliverer, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("middleware: RedelivererConfig.Store is required")
	case cfg.Publisher == nil:
		return nil, errors.New("middleware: RedelivererConfig.Publisher is required")
	case cfg.Interval < 0:
		return nil, fmt.Errorf("middleware: RedelivererConfig.Interval must not be negative, got %s", cfg.Interval)
	case cfg.BatchSize < 0:
		return nil, fmt.Errorf("middleware: RedelivererConfig.BatchSize must not be negative, got %d", cfg.BatchSize)
	}
	cfg.Interval = cmp.Or(cfg.Interval, DefaultRedeliverInterval)
	cfg.BatchSize = cmp.Or(cfg.BatchSize, DefaultRedeliverBatch)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	return &Redeliverer{cfg: cfg}, nil
}

// Run publishes due messages until ctx ends, then returns nil. A pass that takes a
// full batch is followed at once by the next; otherwise it waits Interval. A failing
// store is logged and tried again after Interval.
func (r *Redeliverer) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := r.Pass(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			r.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "idem: taking due parked messages failed; trying again",
				slog.String("error", err.Error()), slog.Duration("wait", r.cfg.Interval))
			t.Reset(r.cfg.Interval)
		case n == r.cfg.BatchSize:
			t.Reset(0)
		default:
			t.Reset(r.cfg.Interval)
		}
	}
}

// Pass publishes the messages due now, up to BatchSize, and returns how many it
// published.
func (r *Redeliverer) Pass(ctx context.Context) (int, error) {
	return r.cfg.Store.TakeDue(ctx, r.cfg.BatchSize, func(ctx context.Context, p dedup.Parked) error {
		msg := message.NewMessage(watermill.NewUUID(), p.Payload)
		for k, v := range p.Metadata {
			msg.Metadata.Set(k, v)
		}
		msg.SetContext(ctx)
		if err := r.cfg.Publisher.Publish(p.Topic, msg); err != nil {
			r.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "idem: publishing a due parked message failed; it stays parked",
				slog.String("consumer", p.Key.Consumer), slog.String("event_id", p.Key.EventID),
				slog.String("topic", p.Topic), slog.String("error", err.Error()))
			return err
		}
		return nil
	})
}
