// Package outbox publishes Watermill messages if and only if a PostgreSQL transaction
// commits: "commit then publish" loses messages when the publish fails, and "publish
// then commit" announces changes that never happened.
//
// # How
//
// [PublishTx] writes messages into an outbox table (a watermill-sql topic) inside the
// caller's pgx transaction, so they commit or roll back with the caller's own writes.
// A [Relay] runs Watermill's forwarder: it reads the outbox and publishes each message
// to its destination topic on the real broker, with its UUID, metadata and event ID
// unchanged. Delivery to the broker is at least once (a relay that crashes after
// publishing and before acknowledging publishes again); consumers deduplicate by event
// ID, so the effect is once. The publish time PublishTx stamps (metadata
// published_at) travels with the message, so a consumer's idem.queue.duration counts
// the time in the outbox too.
//
// # Usage
//
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, "UPDATE orders SET state = 'placed' WHERE id = $1", id)
//	outbox.PublishTx(ctx, tx, outbox.Config{}, "orders", msg) // commits with the update, or not at all
//	tx.Commit(ctx)
//
//	relay, _ := outbox.NewRelay(pool, brokerPublisher, outbox.Config{})
//	go relay.Run(ctx)
//
// The outbox table is created by [Migrate], never as a side effect of publishing.
package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

// DefaultTopic is the outbox's watermill-sql topic (table watermill_idem_outbox).
const DefaultTopic = "idem_outbox"

// Config names the outbox. The same Config must be used by PublishTx, the Relay and
// Migrate.
type Config struct {
	// Topic is the watermill-sql topic that holds the outbox; its table is
	// watermill_<Topic>. Defaults to DefaultTopic.
	Topic string
	// PollInterval is how often the relay looks for new messages when the outbox is
	// empty. Defaults to 100ms.
	PollInterval time.Duration
	// Logger is Watermill's logger for the relay. Defaults to watermill.NopLogger.
	Logger watermill.LoggerAdapter
	// AssignSequence makes PublishTx number the events of each entity: a message with
	// metadata entity_id (dedup.EntityIDKey) and no entity_seq (dedup.EntitySeqKey)
	// gets the entity's next sequence number, 1 for its first event, counted in a row
	// per entity of table entity_sequences (migration 008 of package postgres) inside
	// the caller's transaction. A rollback takes the number back, so the numbers have
	// no gaps; and the row stays locked until the transaction ends, so two
	// transactions publishing for one entity get their numbers in commit order.
	// Entity IDs share one numbering across topics: make them unique across the
	// entity types one consumer sees ("order:42"). Defaults to false.
	AssignSequence bool
	// Schema is the schema of idem's tables (postgres.Migrate) that holds
	// entity_sequences, for AssignSequence. Defaults to postgres.DefaultSchema.
	Schema string
}

func (c Config) withDefaults() Config {
	c.Topic = cmp.Or(c.Topic, DefaultTopic)
	c.PollInterval = cmp.Or(c.PollInterval, 100*time.Millisecond)
	c.Schema = cmp.Or(c.Schema, postgres.DefaultSchema)
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	return c
}

var schema = wsql.DefaultPostgreSQLSchema{}

// PublishTx writes msgs, destined for topic, into the outbox inside tx: they reach the
// broker if and only if tx commits. Commit through tx itself. Each message keeps its
// UUID and metadata (set the event ID, metadata event_id, before publishing), and
// gets metadata published_at (middleware.PublishedAtKey), the time of the write,
// unless it carries one already. With cfg.AssignSequence, each message of an entity
// gets the entity's next sequence number (see Config.AssignSequence).
func PublishTx(ctx context.Context, tx pgx.Tx, cfg Config, topic string, msgs ...*message.Message) error {
	cfg = cfg.withDefaults()
	if topic == "" {
		return errors.New("outbox: PublishTx needs a destination topic")
	}
	if len(msgs) == 0 {
		return nil
	}
	if cfg.AssignSequence {
		if err := assignSequences(ctx, tx, cfg.Schema, msgs); err != nil {
			return err
		}
	}
	now := time.Now()
	for _, msg := range msgs {
		middleware.StampPublishedAt(msg, now)
	}
	pub, err := wsql.NewPublisher(txExecutor{tx: tx, ctx: ctx}, wsql.PublisherConfig{SchemaAdapter: schema}, cfg.Logger)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: cfg.Topic}).Publish(topic, msgs...); err != nil {
		return fmt.Errorf("outbox: write %d messages for %s: %w", len(msgs), topic, err)
	}
	return nil
}

// txExecutor runs watermill-sql's insert on the caller's transaction, with the
// caller's context (watermill-sql would use the enveloped message's).
type txExecutor struct {
	tx  pgx.Tx
	ctx context.Context
}

func (e txExecutor) ExecContext(_ context.Context, query string, args ...any) (wsql.Result, error) {
	tag, err := e.tx.Exec(e.ctx, query, args...)
	return wsql.PgxResult{CommandTag: tag}, err
}

func (e txExecutor) QueryContext(_ context.Context, query string, args ...any) (wsql.Rows, error) {
	rows, err := e.tx.Query(e.ctx, query, args...)
	return wsql.PgxRows{Rows: rows}, err
}

// Migrate creates the outbox table and its offsets table if they do not exist. Run it
// at deploy time, like postgres.Migrate.
func Migrate(ctx context.Context, pool *pgxpool.Pool, cfg Config) error {
	cfg = cfg.withDefaults()
	sub, err := newSubscriber(pool, cfg)
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(cfg.Topic); err != nil {
		return fmt.Errorf("outbox: create the tables of topic %s: %w", cfg.Topic, err)
	}
	return nil
}

func newSubscriber(pool *pgxpool.Pool, cfg Config) (*wsql.Subscriber, error) {
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		ConsumerGroup:  "idem_outbox_relay",
		SchemaAdapter:  schema,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   cfg.PollInterval,
	}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("outbox: relay subscriber: %w", err)
	}
	return sub, nil
}

// Relay moves messages from the outbox to the broker. Run as many relays as you like:
// watermill-sql's consumer group hands each message to one of them.
type Relay struct {
	fwd *forwarder.Forwarder
	sub *wsql.Subscriber
}

// NewRelay returns a relay that reads the outbox through pool and publishes to out.
func NewRelay(pool *pgxpool.Pool, out message.Publisher, cfg Config) (*Relay, error) {
	if pool == nil || out == nil {
		return nil, errors.New("outbox: NewRelay needs a pool and a publisher")
	}
	cfg = cfg.withDefaults()
	sub, err := newSubscriber(pool, cfg)
	if err != nil {
		return nil, err
	}
	fwd, err := forwarder.NewForwarder(sub, out, cfg.Logger, forwarder.Config{ForwarderTopic: cfg.Topic, CloseTimeout: 10 * time.Second})
	if err != nil {
		_ = sub.Close()
		return nil, fmt.Errorf("outbox: relay: %w", err)
	}
	return &Relay{fwd: fwd, sub: sub}, nil
}

// Run relays until ctx ends or Close is called.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.fwd.Run(ctx); err != nil {
		return fmt.Errorf("outbox: relay: %w", err)
	}
	return nil
}

// Running is closed once the relay runs.
func (r *Relay) Running() chan struct{} { return r.fwd.Running() }

// Close stops the relay.
func (r *Relay) Close() error {
	return errors.Join(r.fwd.Close(), r.sub.Close())
}

// Writer writes the messages a consumer's handler produces into the outbox, inside the
// attempt's transaction: set it as consumer.Config.Outbox, and consume-transform-
// produce is exactly once in effect (the produced messages are published if and only
// if the consumed event's effects commit).
type Writer struct {
	Config Config
}

// WriteTx writes msgs for topic in the transaction ctx carries (postgres.TxFromContext).
func (w Writer) WriteTx(ctx context.Context, topic string, msgs ...*message.Message) error {
	tx, ok := postgres.TxFromContext(ctx)
	if !ok {
		return fmt.Errorf("outbox: no idem transaction in the context: %w", postgres.ErrNoTx)
	}
	return PublishTx(ctx, tx, w.Config, topic, msgs...)
}

// assignSequences gives each message of msgs that names an entity and carries no
// sequence number the entity's next one, in tx.
func assignSequences(ctx context.Context, tx pgx.Tx, schema string, msgs []*message.Message) error {
	if err := postgres.ValidateIdentifier("Schema", schema); err != nil {
		return fmt.Errorf("outbox: Config.Schema: %w", err)
	}
	next := `INSERT INTO ` + pgx.Identifier{schema, "entity_sequences"}.Sanitize() + ` AS s (entity_id, seq) VALUES ($1, 1)
ON CONFLICT (entity_id) DO UPDATE SET seq = s.seq + 1 RETURNING seq`
	for _, msg := range msgs {
		id := msg.Metadata.Get(dedup.EntityIDKey)
		if id == "" || msg.Metadata.Get(dedup.EntitySeqKey) != "" {
			continue
		}
		if err := dedup.ValidateEventID(id, dedup.DefaultMaxIDLength); err != nil {
			return fmt.Errorf("outbox: message %s: entity ID: %w", msg.UUID, err)
		}
		var seq int64
		if err := tx.QueryRow(ctx, next, id).Scan(&seq); err != nil {
			return fmt.Errorf("outbox: assign the next sequence number of entity %q: %w", id, err)
		}
		msg.Metadata.Set(dedup.EntitySeqKey, strconv.FormatInt(seq, 10))
	}
	return nil
}
