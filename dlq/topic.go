package dlq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys of the compact headers on messages published to a dead-letter topic.
// The full error history stays in the store.
const (
	HeaderID          = "idem_dlq_id"
	HeaderReason      = "idem_dlq_reason"
	HeaderFingerprint = "idem_dlq_fingerprint"
	HeaderAttempts    = "idem_dlq_attempts"
	HeaderOriginTopic = "idem_dlq_origin_topic"
	HeaderConsumer    = "idem_dlq_consumer"
	HeaderError       = "idem_dlq_error"
	HeaderTraceID     = "idem_dlq_trace_id"
	HeaderSpanID      = "idem_dlq_span_id"
)

// maxHeaderError bounds the error text carried in a header.
const maxHeaderError = 256

// TopicMessage builds the message that announces d on a dead-letter topic: the
// original payload and metadata, plus the compact headers above, and the correlation
// ID. Its UUID is new; its event_id is the original's, so consumers of the topic can
// deduplicate.
func TopicMessage(d *DeadLetter) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), d.Payload)
	for k, v := range d.Metadata {
		msg.Metadata.Set(k, v)
	}
	msg.Metadata.Set(HeaderID, strconv.FormatInt(d.ID, 10))
	msg.Metadata.Set(HeaderReason, string(d.Reason))
	msg.Metadata.Set(HeaderFingerprint, d.Fingerprint)
	msg.Metadata.Set(HeaderAttempts, strconv.Itoa(d.Attempts))
	msg.Metadata.Set(HeaderOriginTopic, d.Topic)
	msg.Metadata.Set(HeaderConsumer, d.Consumer)
	msg.Metadata.Set(HeaderError, ScrubError(d.Error, maxHeaderError))
	if d.CorrelationID != "" {
		msg.Metadata.Set("correlation_id", d.CorrelationID)
	}
	if d.TraceID != "" {
		msg.Metadata.Set(HeaderTraceID, d.TraceID)
		msg.Metadata.Set(HeaderSpanID, d.SpanID)
	}
	return msg
}

// TopicStore is what a [TopicPublisher] needs from a store: the dead letters not yet
// published, and a way to mark one published. postgres.Store and sqlite.Store
// implement it.
type TopicStore interface {
	// Unpublished returns at most limit pending dead letters, oldest first, that were
	// not published since they were last dead-lettered.
	Unpublished(ctx context.Context, limit int) ([]*DeadLetter, error)
	// MarkPublished records that the dead letter id was published.
	MarkPublished(ctx context.Context, id int64) error
}

// Defaults of [TopicPublisherConfig].
const (
	DefaultTopicInterval = 5 * time.Second
	DefaultTopicBatch    = 100
)

// TopicPublisherConfig configures a [TopicPublisher].
type TopicPublisherConfig struct {
	// Store holds the dead letters. Required.
	Store TopicStore
	// Publisher publishes to the dead-letter topic; any Watermill publisher. Required.
	Publisher message.Publisher
	// Topic is the dead-letter topic. Required.
	Topic string
	// Interval is how often Run looks for dead letters to publish when nothing nudges
	// it, and how long it waits after a failed publish. Defaults to
	// DefaultTopicInterval.
	Interval time.Duration
	// Batch is how many dead letters one pass publishes at most. Defaults to
	// DefaultTopicBatch.
	Batch int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// TopicPublisher publishes dead letters to a dead-letter topic, after they committed
// and only then: it reads them from the store, publishes, then marks them published.
// A failed publish is retried on the next pass and never touches the stored dead
// letter; a crash between publishing and marking publishes the dead letter again (at
// least once, like any Watermill delivery). Run it for as long as consumers run; it
// also serves as the consumer's Notifier, so that a new dead letter is published at
// once rather than at the next interval. It is safe for concurrent use.
type TopicPublisher struct {
	cfg   TopicPublisherConfig
	nudge chan struct{}
}

// NewTopicPublisher checks cfg.
func NewTopicPublisher(cfg TopicPublisherConfig) (*TopicPublisher, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("dlq: TopicPublisherConfig.Store is required")
	case cfg.Publisher == nil:
		return nil, errors.New("dlq: TopicPublisherConfig.Publisher is required")
	case cfg.Topic == "":
		return nil, errors.New("dlq: TopicPublisherConfig.Topic is required")
	case cfg.Interval < 0:
		return nil, fmt.Errorf("dlq: TopicPublisherConfig.Interval must not be negative, got %s", cfg.Interval)
	case cfg.Batch < 0:
		return nil, fmt.Errorf("dlq: TopicPublisherConfig.Batch must not be negative, got %d", cfg.Batch)
	}
	cfg.Interval = cmp.Or(cfg.Interval, DefaultTopicInterval)
	cfg.Batch = cmp.Or(cfg.Batch, DefaultTopicBatch)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	return &TopicPublisher{cfg: cfg, nudge: make(chan struct{}, 1)}, nil
}

// Notify wakes Run up to publish a dead letter that just committed. It never blocks.
func (p *TopicPublisher) Notify(*DeadLetter) {
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// Run publishes unpublished dead letters until ctx ends, then returns nil.
func (p *TopicPublisher) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.nudge:
		}
		n, err := p.PublishPending(ctx)
		wait := p.cfg.Interval
		if err == nil && n == p.cfg.Batch {
			wait = 0 // more may be waiting
		}
		if err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("idem: publishing dead letters to their topic failed; retrying", slog.String("topic", p.cfg.Topic),
				slog.Int("published", n), slog.Duration("retry_in", wait), slog.String("error", err.Error()))
		}
		t.Reset(wait)
	}
}

// PublishPending publishes one batch of unpublished dead letters, stopping at the
// first failure, and reports how many it published.
func (p *TopicPublisher) PublishPending(ctx context.Context) (int, error) {
	letters, err := p.cfg.Store.Unpublished(ctx, p.cfg.Batch)
	if err != nil {
		return 0, fmt.Errorf("dlq: read unpublished dead letters: %w", err)
	}
	for i, d := range letters {
		if err := p.cfg.Publisher.Publish(p.cfg.Topic, TopicMessage(d)); err != nil {
			return i, fmt.Errorf("dlq: publish dead letter %d to %s: %w", d.ID, p.cfg.Topic, err)
		}
		if err := p.cfg.Store.MarkPublished(ctx, d.ID); err != nil {
			return i, fmt.Errorf("dlq: mark dead letter %d published: %w", d.ID, err)
		}
	}
	return len(letters), nil
}
