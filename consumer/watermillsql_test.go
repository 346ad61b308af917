package consumer_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// sqlBroker is watermill-sql on the test database, with topics unique to one test.
type sqlBroker struct {
	pub    *wsql.Publisher
	sub    *wsql.Subscriber
	topic  string
	schema wsql.DefaultPostgreSQLSchema
	pool   *pgxpool.Pool
}

func newSQLBroker(t testing.TB, pool *pgxpool.Pool) *sqlBroker {
	t.Helper()
	var b [5]byte
	_, _ = rand.Read(b[:])
	br := &sqlBroker{
		topic:  "idem_test_" + hex.EncodeToString(b[:]),
		schema: wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }},
		pool:   pool,
	}
	db := wsql.BeginnerFromPgx(pool)
	var err error
	br.pub, err = wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: br.schema, AutoInitializeSchema: true}, watermill.NopLogger{})
	require.NoError(t, err)
	br.sub, err = wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:    br.schema,
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
		PollInterval:     10 * time.Millisecond,
		ResendInterval:   time.Millisecond,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, br.sub.SubscribeInitialize(br.topic))
	t.Cleanup(func() {
		_ = br.sub.Close()
		_ = br.pub.Close()
		ctx := context.Background()
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_" + br.topic}.Sanitize())
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_offsets_" + br.topic}.Sanitize())
	})
	return br
}

func (br *sqlBroker) publish(t testing.TB, msgs ...*message.Message) {
	t.Helper()
	require.NoError(t, br.pub.Publish(br.topic, msgs...))
}

func runRouter(t testing.TB, register func(r *message.Router)) {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	register(r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Running()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, r.Close())
		require.NoError(t, <-done)
	})
}

func TestWatermillSQLClaimsInTheSubscribersTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	br := newSQLBroker(t, b.pool)
	c, err := consumer.New(consumer.Config{
		Store:       b.store,
		Retry:       retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, MaxElapsedTime: 10 * time.Second},
		AckDeadline: 30 * time.Second, // watermill-sql's default
		Logger:      testLogger(t),
	})
	require.NoError(t, err)

	var sameTx, otherTx atomic.Int32
	var flaky atomic.Bool
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "billing", br.topic, br.sub, func(msg *message.Message) error {
			ctx := msg.Context()
			tx, ok := postgres.TxFromContext(ctx)
			require.True(t, ok)
			if wtx, ok := wsql.TxFromContext(ctx); ok && wtx.(*wsql.PgxTx).Tx == tx {
				sameTx.Add(1)
			} else {
				otherTx.Add(1)
			}
			if err := b.effect(ctx, msg); err != nil {
				return err
			}
			if msg.Metadata.Get("event_id") == "evt-3" && flaky.CompareAndSwap(false, true) {
				return fmt.Errorf("payment gateway timeout") // after the effect: the savepoint rolls back
			}
			return nil
		})
	})
	br.publish(t, newMessage("evt-1", "a"), newMessage("evt-2", "b"), newMessage("evt-1", "a"), newMessage("evt-3", "c"))

	processed := pgx.Identifier{b.store.Schema(), "processed"}.Sanitize()
	require.Eventually(t, func() bool {
		return b.count(t, "SELECT count(*) FROM "+processed) == 3
	}, 20*time.Second, 10*time.Millisecond)
	for _, id := range []string{"evt-1", "evt-2", "evt-3"} {
		require.Equal(t, 1, b.effectsOf(t, id), id)
	}
	require.Equal(t, 1, b.attempts(t, "billing", "evt-3"), "the failed attempt is counted")
	require.Zero(t, otherTx.Load(), "every attempt ran in the subscriber's transaction")
	require.Equal(t, int32(4), sameTx.Load(), "three events, one retry; the duplicate never reached the handler")
	require.Zero(t, b.deadLetters(t))
}

// BenchmarkWatermillSQL compares claiming in a savepoint of the watermill-sql
// subscriber's transaction with claiming in a transaction of its own. Run:
//
//	go test -run '^$' -bench WatermillSQL -benchtime 2000x ./consumer/
func BenchmarkWatermillSQL(b *testing.B) {
	for _, mode := range []struct {
		name   string
		ignore bool
	}{{"savepoint", false}, {"own-transaction", true}} {
		b.Run(mode.name, func(b *testing.B) {
			store, pool := testdbStore(b, mode.ignore)
			br := newSQLBroker(b, pool)
			effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
			_, err := pool.Exec(context.Background(), "CREATE TABLE "+effects+" (event_id text PRIMARY KEY)")
			require.NoError(b, err)
			msgs := make([]*message.Message, b.N)
			for i := range msgs {
				msgs[i] = newMessage(fmt.Sprintf("evt-%d", i), "x")
			}
			br.publish(b, msgs...)
			c, err := consumer.New(consumer.Config{Store: store, Retry: retry.Policy{MaxElapsedTime: 10 * time.Second}, AckDeadline: 30 * time.Second, Logger: discardLogger()})
			require.NoError(b, err)
			var done atomic.Int64
			finished := make(chan struct{})
			b.ResetTimer()
			runRouter(b, func(r *message.Router) {
				c.AddConsumerHandler(r, "billing", br.topic, br.sub, func(msg *message.Message) error {
					ctx := msg.Context()
					tx, _ := postgres.TxFromContext(ctx)
					if _, err := tx.Exec(ctx, "INSERT INTO "+effects+" (event_id) VALUES ($1)", msg.Metadata.Get("event_id")); err != nil {
						return err
					}
					if done.Add(1) == int64(b.N) {
						close(finished)
					}
					return nil
				})
			})
			select {
			case <-finished:
			case <-time.After(5 * time.Minute):
				b.Fatal("timed out")
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
