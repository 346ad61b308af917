package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/outbox"
	"github.com/idemkit/idem/postgres"
)

func setup(t *testing.T) (*pgxpool.Pool, outbox.Config) {
	t.Helper()
	pool := testdb.Pool(t)
	var b [5]byte
	_, _ = rand.Read(b[:])
	cfg := outbox.Config{Topic: "idem_outbox_test_" + hex.EncodeToString(b[:]), PollInterval: 10 * time.Millisecond}
	require.NoError(t, outbox.Migrate(context.Background(), pool, cfg))
	t.Cleanup(func() {
		ctx := context.Background()
		for _, table := range []string{"watermill_" + cfg.Topic, "watermill_offsets_" + cfg.Topic} {
			_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize())
		}
	})
	return pool, cfg
}

func event(id string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":"`+id+`"}`))
	msg.Metadata.Set("event_id", id)
	return msg
}

func publishInTx(t *testing.T, pool *pgxpool.Pool, cfg outbox.Config, commit bool, ids ...string) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	for _, id := range ids {
		require.NoError(t, outbox.PublishTx(ctx, tx, cfg, "orders", event(id)))
	}
	if commit {
		require.NoError(t, tx.Commit(ctx))
	}
}

// collect receives from topic until want distinct event IDs arrived, and returns how
// many times each arrived.
func collect(t *testing.T, msgs <-chan *message.Message, want int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	deadline := time.After(20 * time.Second)
	for len(seen) < want {
		select {
		case m := <-msgs:
			seen[m.Metadata.Get("event_id")]++
			m.Ack()
		case <-deadline:
			t.Fatalf("only %d of %d events arrived: %v", len(seen), want, seen)
		}
	}
	return seen
}

func runRelay(t *testing.T, pool *pgxpool.Pool, out message.Publisher, cfg outbox.Config) (stop func()) {
	t.Helper()
	relay, err := outbox.NewRelay(pool, out, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	<-relay.Running()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, relay.Close())
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestPublishIffCommit(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 100, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = broker.Close() })
	msgs, err := broker.Subscribe(context.Background(), "orders")
	require.NoError(t, err)

	publishInTx(t, pool, cfg, false, "rolled-back-1", "rolled-back-2")
	publishInTx(t, pool, cfg, true, "evt-1", "evt-2", "evt-3")
	runRelay(t, pool, broker, cfg)

	seen := collect(t, msgs, 3)
	require.Equal(t, map[string]int{"evt-1": 1, "evt-2": 1, "evt-3": 1}, seen)
	select {
	case m := <-msgs:
		t.Fatalf("a message of a rolled-back transaction was published: %s", m.Metadata.Get("event_id"))
	case <-time.After(200 * time.Millisecond):
	}
}

func TestMessagesKeepTheirUUIDAndMetadata(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = broker.Close() })
	msgs, err := broker.Subscribe(context.Background(), "orders")
	require.NoError(t, err)
	msg := event("evt-1")
	msg.Metadata.Set("correlation_id", "corr-1")
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, outbox.PublishTx(ctx, tx, cfg, "orders", msg))
	require.NoError(t, tx.Commit(ctx))
	runRelay(t, pool, broker, cfg)
	select {
	case got := <-msgs:
		got.Ack()
		require.Equal(t, msg.UUID, got.UUID)
		require.Equal(t, "corr-1", got.Metadata.Get("correlation_id"))
		require.Equal(t, "evt-1", got.Metadata.Get("event_id"))
		require.Equal(t, string(msg.Payload), string(got.Payload))
	case <-time.After(20 * time.Second):
		t.Fatal("nothing relayed")
	}
}

// The publish time is stamped when the message is written to the outbox, by PublishTx
// and by the consumer's Writer, and survives the relay, even through a decorated
// publisher: the consumer's queue time covers the outbox and the broker.
func TestPublishTimeIsStampedInTheOutbox(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = broker.Close() })
	msgs, err := broker.Subscribe(context.Background(), "orders")
	require.NoError(t, err)

	const own = "2025-03-14T09:26:53.589793238Z"
	stamped := event("evt-own")
	stamped.Metadata.Set(middleware.PublishedAtKey, own)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	before := time.Now()
	require.NoError(t, outbox.PublishTx(ctx, tx, cfg, "orders", event("evt-tx"), stamped))
	require.NoError(t, outbox.Writer{Config: cfg}.WriteTx(postgres.ContextWithTx(ctx, tx), "orders", event("evt-writer")))
	written := time.Now()
	require.NoError(t, tx.Commit(ctx))
	time.Sleep(50 * time.Millisecond) // in the outbox a while

	relayed, err := middleware.NewPublisher(broker, middleware.PublisherConfig{})
	require.NoError(t, err)
	runRelay(t, pool, relayed, cfg)
	got := map[string]string{}
	deadline := time.After(20 * time.Second)
	for len(got) < 3 {
		select {
		case m := <-msgs:
			m.Ack()
			got[m.Metadata.Get("event_id")] = m.Metadata.Get(middleware.PublishedAtKey)
		case <-deadline:
			t.Fatalf("only %d of 3 relayed: %v", len(got), got)
		}
	}
	require.Equal(t, own, got["evt-own"], "a stamp the producer set is kept")
	for _, id := range []string{"evt-tx", "evt-writer"} {
		at, err := time.Parse(time.RFC3339Nano, got[id])
		require.NoError(t, err, "%s: %q", id, got[id])
		require.False(t, at.Before(before) || at.After(written),
			"%s is stamped when written to the outbox (%s), not when relayed: %s", id, before.UTC(), got[id])
	}
}

// failingPublisher publishes the first n messages, then fails as a relay killed
// mid-flight would stop.
type failingPublisher struct {
	message.Publisher
	left atomic.Int32
}

func (p *failingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.left.Add(-1) < 0 {
		return errors.New("relay killed")
	}
	return p.Publisher.Publish(topic, msgs...)
}

func TestRelayRestartLosesNothing(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1000, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = broker.Close() })
	msgs, err := broker.Subscribe(context.Background(), "orders")
	require.NoError(t, err)
	const n = 50
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("evt-%d", i)
	}
	publishInTx(t, pool, cfg, true, ids...)

	dying := &failingPublisher{Publisher: broker}
	dying.left.Store(20)
	stop := runRelay(t, pool, dying, cfg)
	require.Eventually(t, func() bool { return dying.left.Load() < 0 }, 20*time.Second, 10*time.Millisecond)
	stop() // killed mid-flight

	runRelay(t, pool, broker, cfg) // restarted
	seen := collect(t, msgs, n)
	require.Len(t, seen, n, "every committed message reached the broker")
	for id, times := range seen {
		require.GreaterOrEqual(t, times, 1, id)
	}
}

// Duplicates on the wire, effects once at the consumer: everything the relays
// published, copies included, goes through an idem consumer.
func TestRelayRestartAppliesEffectsOnce(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	store, _ := testdb.Store(t)
	effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
	ctx := context.Background()
	_, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (event_id text NOT NULL)")
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: store, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	apply := c.WrapConsumer("shipping", func(msg *message.Message) error {
		tx, _ := postgres.TxFromContext(msg.Context())
		_, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (event_id) VALUES ($1)", msg.Metadata.Get("event_id"))
		return err
	})

	broker := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1000, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = broker.Close() })
	msgs, err := broker.Subscribe(ctx, "orders")
	require.NoError(t, err)
	const n = 40
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("evt-%d", i)
	}
	publishInTx(t, pool, cfg, true, ids...)

	// A relay that relays five messages, then publishes the sixth again and again
	// without ever acking it, and is killed: the sixth is on the wire several times,
	// and goes out once more after the restart.
	dying := &ackLosingPublisher{Publisher: broker}
	dying.okLeft.Store(5)
	stop := runRelay(t, pool, dying, cfg)
	require.Eventually(t, func() bool { return dying.published.Load() >= 7 }, 20*time.Second, 10*time.Millisecond)
	stop()
	runRelay(t, pool, broker, cfg)

	var delivered int
	deadline := time.After(30 * time.Second)
	for {
		var rows int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(DISTINCT event_id) FROM "+effects).Scan(&rows))
		if rows == n {
			break
		}
		select {
		case m := <-msgs:
			delivered++
			require.NoError(t, apply(m))
			m.Ack()
		case <-deadline:
			t.Fatalf("only %d of %d effects after %d deliveries", rows, n, delivered)
		}
	}
	var total int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+effects).Scan(&total))
	require.Equal(t, n, total, "every effect once, however many copies the relays published")
	require.Greater(t, delivered, n, "copies were on the wire")
}

// ackLosingPublisher publishes; after okLeft successful publishes it reports a failure
// after each publish, as a relay that crashes between publishing and acknowledging the
// outbox row would: the row is relayed again.
type ackLosingPublisher struct {
	message.Publisher
	okLeft    atomic.Int32
	published atomic.Int32
}

func (p *ackLosingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.published.Add(int32(len(msgs)))
	if p.okLeft.Add(-1) >= 0 {
		return nil
	}
	return errors.New("relay died before acking")
}

func TestPublishTxValidates(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	require.ErrorContains(t, outbox.PublishTx(ctx, tx, cfg, "", event("x")), "destination topic")
	require.NoError(t, outbox.PublishTx(ctx, tx, cfg, "orders"), "no messages, nothing to do")
	_, err = outbox.NewRelay(nil, nil, cfg)
	require.Error(t, err)
}
