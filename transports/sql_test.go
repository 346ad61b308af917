package transports_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// sqlSchema is watermill-sql's default PostgreSQL schema with payloads as bytes.
var sqlSchema = wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}

func sqlSubscriberConfig(group string) wsql.SubscriberConfig {
	return wsql.SubscriberConfig{
		ConsumerGroup:  group,
		SchemaAdapter:  sqlSchema,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   10 * time.Millisecond,
		ResendInterval: time.Millisecond,
	}
}

// newSQLBroker is watermill-sql on the test database: the topic's tables live in the
// database's default schema, named after a topic unique to the test.
func newSQLBroker(t *testing.T, pool *pgxpool.Pool) *broker {
	t.Helper()
	topic := uniqueName("idem_test_")
	const group = "billing"
	db := wsql.BeginnerFromPgx(pool)
	messages, offsets := sqlSchema.MessagesTable(topic), wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(topic)
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+messages)
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+offsets)
	})
	// The tables exist before anything runs: no DDL while consuming.
	init, err := wsql.NewSubscriber(db, sqlSubscriberConfig(group), watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, init.SubscribeInitialize(topic))
	require.NoError(t, init.Close())

	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: sqlSchema}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })

	return &broker{
		system:      "postgresql",
		topic:       topic,
		ackDeadline: postgres.SubscriberAckDeadline(sqlSubscriberConfig(group)),
		publisher:   pub,
		subscriber: func(t *testing.T, _ int) message.Subscriber {
			sub, err := wsql.NewSubscriber(db, sqlSubscriberConfig(group), watermill.NopLogger{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Close() })
			return sub
		},
		unfinished: func(ctx context.Context) (string, error) {
			var last, acked int64
			err := pool.QueryRow(ctx, `SELECT coalesce((SELECT max("offset") FROM `+messages+`), 0),
				coalesce((SELECT offset_acked FROM `+offsets+` WHERE consumer_group = $1), 0)`, group).Scan(&last, &acked)
			if err != nil || last == acked {
				return "", err
			}
			return fmt.Sprintf("acked up to offset %d of %d", acked, last), nil
		},
	}
}

func TestWatermillSQL(t *testing.T) {
	t.Parallel()
	runScenario(t, newSQLBroker)
}

// watermill-sql's limits, which docs/transports.md lists.
func TestWatermillSQLLimits(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	db := wsql.BeginnerFromPgx(pool)

	t.Run("MessageUUIDOver36Characters", func(t *testing.T) {
		t.Parallel()
		br := newSQLBroker(t, pool)
		msg := newMessage("evt-1", "a")
		msg.UUID = strings.Repeat("x", 37) // e.g. a prefixed ID, or a ULID with a prefix
		err := br.publisher.Publish(br.topic, msg)
		require.ErrorContains(t, err, "value too long", "the uuid column is VARCHAR(36)")
	})

	t.Run("TopicsOver45CharactersShareOffsets", func(t *testing.T) {
		t.Parallel()
		prefix := uniqueName("idem_test_") + strings.Repeat("t", 45-len("idem_test_")-12)
		a, b := prefix+"_orders", prefix+"_payments"
		offsets := wsql.DefaultPostgreSQLOffsetsAdapter{}
		for _, topic := range []string{a, b} {
			t.Cleanup(func() {
				ctx := context.Background()
				_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+sqlSchema.MessagesTable(topic))
				_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+offsets.MessagesOffsetsTable(topic))
			})
			sub, err := wsql.NewSubscriber(db, sqlSubscriberConfig("billing"), watermill.NopLogger{})
			require.NoError(t, err)
			require.NoError(t, sub.SubscribeInitialize(topic))
			require.NoError(t, sub.Close())
		}
		// PostgreSQL cuts identifiers at 63 bytes: "watermill_offsets_" leaves 45 for the topic.
		var n int
		require.NoError(t, pool.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE $1", "watermill_offsets_"+prefix+"%").Scan(&n))
		require.Equal(t, 1, n, "two topics, one offsets table: their consumer groups' offsets collide")
		require.NoError(t, pool.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE $1", "watermill_"+prefix+"%").Scan(&n))
		require.Equal(t, 2, n, "while each topic has a messages table of its own")
	})
}
