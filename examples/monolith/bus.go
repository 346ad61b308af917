package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/postgres"
)

// The pub/sub constructor: one of the two that differ between deployments (the store
// constructor, in store.go, is the other).

// bus is what the pub/sub constructor returns.
type bus struct {
	describe string
	pub      message.Publisher
	// subs holds each consumer's subscriber.
	subs map[string]message.Subscriber
	// ackDeadline is how long the subscriber waits for an ack before it redelivers on
	// its own; 0 when it has no such deadline.
	ackDeadline time.Duration
	close       func() error
}

// newGoChannel is the in-process bus. gochannel hands every subscriber every message,
// so each module consumes the whole topic.
func newGoChannel(wlog watermill.LoggerAdapter) *bus {
	ps := gochannel.NewGoChannel(gochannel.Config{}, wlog)
	subs := map[string]message.Subscriber{}
	for _, name := range consumers {
		subs[name] = ps
	}
	return &bus{
		describe: "Watermill gochannel, in-process (no broker)",
		pub:      ps,
		subs:     subs,
		close:    ps.Close,
	}
}

// newWatermillSQL is watermill-sql on PostgreSQL. Each module is its own consumer
// group, so that each reads the whole topic. The subscriber consumes each batch of
// messages inside a transaction; idem claims in a savepoint of it, so the claim, the
// handler's writes and the consumed offset commit together.
func newWatermillSQL(ctx context.Context, pool *pgxpool.Pool, t topics, wlog watermill.LoggerAdapter) (*bus, error) {
	// Every run starts clean: drop this example's topic tables (in the -schema, which
	// the pool's search_path points at).
	for _, topic := range []string{t.orderPlaced, t.paymentCaptured} {
		tables := pgx.Identifier{"watermill_" + topic}.Sanitize() + ", " + pgx.Identifier{"watermill_offsets_" + topic}.Sanitize()
		if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+tables); err != nil {
			return nil, fmt.Errorf("drop the topic tables of %s: %w", topic, err)
		}
	}
	db := wsql.BeginnerFromPgx(pool)
	adapter := wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: adapter}, wlog)
	if err != nil {
		return nil, err
	}
	subCfg := wsql.SubscriberConfig{
		SchemaAdapter:  adapter,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		// Creates the topic tables when the router subscribes, before anything is
		// published. A production deployment creates them with its migrations.
		InitializeSchema: true,
		PollInterval:     20 * time.Millisecond,
		ResendInterval:   50 * time.Millisecond,
		// AckDeadline left nil: watermill-sql's default of 30s.
	}
	subs := map[string]message.Subscriber{}
	for _, name := range consumers {
		cfg := subCfg
		cfg.ConsumerGroup = name
		sub, err := wsql.NewSubscriber(db, cfg, wlog)
		if err != nil {
			return nil, errors.Join(err, pub.Close())
		}
		subs[name] = sub
	}
	return &bus{
		describe: fmt.Sprintf("watermill-sql on PostgreSQL, topics %s and %s, one consumer group per module", t.orderPlaced, t.paymentCaptured),
		pub:      pub,
		subs:     subs,
		// The consumer's retry budget must end before the subscriber redelivers.
		ackDeadline: postgres.SubscriberAckDeadline(subCfg),
		close: func() error {
			errs := []error{pub.Close()}
			for _, sub := range subs {
				errs = append(errs, sub.Close())
			}
			return errors.Join(errs...)
		},
	}, nil
}
