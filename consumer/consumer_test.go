package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

type testBundle struct {
	store    *postgres.Store
	pool     *pgxpool.Pool
	consumer *consumer.Consumer
	effects  string // quoted table name
	calls    atomic.Int32
}

func fastPolicy() retry.Policy {
	return retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	store, pool := testdb.Store(t)
	b := &testBundle{store: store, pool: pool, effects: pgx.Identifier{store.Schema(), "effects"}.Sanitize()}
	_, err := pool.Exec(context.Background(), "CREATE TABLE "+b.effects+" (event_id text NOT NULL, note text NOT NULL)")
	require.NoError(t, err)
	b.consumer, err = consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
	require.NoError(t, err)
	return b
}

// effect writes one effect row through the attempt's transaction.
func (b *testBundle) effect(ctx context.Context, msg *message.Message) error {
	tx, ok := postgres.TxFromContext(ctx)
	if !ok {
		return postgres.ErrNoTx
	}
	_, err := tx.Exec(ctx, "INSERT INTO "+b.effects+" (event_id, note) VALUES ($1, $2)", msg.Metadata.Get("event_id"), string(msg.Payload))
	return err
}

// crashedStart leaves an unfinished start of eventID, as a consumer process on the
// same store that died mid-delivery leaves it: counted by another Store, which
// never holds its liveness.
func (b *testBundle) crashedStart(t *testing.T, consumerName, eventID string) {
	t.Helper()
	dead, err := postgres.New(b.pool, postgres.Config{Schema: b.store.Schema()})
	require.NoError(t, err)
	defer dead.Close()
	_, err = dead.StartAttempt(context.Background(), dedupKey(consumerName, eventID))
	require.NoError(t, err)
}

func (b *testBundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

func (b *testBundle) effectsOf(t *testing.T, eventID string) int {
	return b.count(t, "SELECT count(*) FROM "+b.effects+" WHERE event_id = $1", eventID)
}

func (b *testBundle) deadLetters(t *testing.T) int {
	return b.count(t, "SELECT count(*) FROM "+pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize())
}

func (b *testBundle) attempts(t *testing.T, consumerName, eventID string) int {
	return b.count(t, "SELECT coalesce(max(attempts), 0) FROM "+pgx.Identifier{b.store.Schema(), "attempts"}.Sanitize()+
		" WHERE consumer = $1 AND event_id = $2", consumerName, eventID)
}

type deadLetterRow struct {
	Reason, Error, Status, Topic string
	Attempts, Count              int
	Payload                      []byte
}

func (b *testBundle) deadLetter(t *testing.T, consumerName, eventID string) deadLetterRow {
	t.Helper()
	var r deadLetterRow
	err := b.pool.QueryRow(context.Background(), "SELECT reason, error, status, topic, attempts, count, payload FROM "+
		pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()+" WHERE consumer = $1 AND event_id = $2", consumerName, eventID).
		Scan(&r.Reason, &r.Error, &r.Status, &r.Topic, &r.Attempts, &r.Count, &r.Payload)
	require.NoError(t, err, "dead letter %s/%s", consumerName, eventID)
	return r
}

func newMessage(eventID, payload string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
	if eventID != "" {
		msg.Metadata.Set("event_id", eventID)
	}
	return msg
}

// deliver runs one delivery of msg through the wrapped handler, as a router would:
// a nil error is an ack, an error a nack.
func deliver(h message.NoPublishHandlerFunc, msg *message.Message) error {
	return h(msg.Copy())
}

var errBoom = errors.New("boom")

// testLogger logs through t, so that a failing test shows what idem logged.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestConcurrentDuplicatesApplyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		return b.effect(msg.Context(), msg)
	})
	msg := newMessage("evt-1", "placed")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range 8 {
		wg.Go(func() { errs[i] = deliver(h, msg) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...), "every delivery, the duplicates included, is acked")
	require.Equal(t, int32(1), b.calls.Load(), "the handler runs once; seven duplicates are skipped")
	require.Equal(t, 1, b.effectsOf(t, "evt-1"))
	require.Zero(t, b.deadLetters(t))
}

func TestFailureBeforeCommitPersistsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var killed atomic.Bool
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		ctx := msg.Context()
		if err := b.effect(ctx, msg); err != nil {
			return err
		}
		if killed.CompareAndSwap(false, true) {
			// The claim and the effect are written; the connection dies before COMMIT.
			tx, _ := postgres.TxFromContext(ctx)
			var pid int
			require.NoError(t, tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))
			_, err := b.pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid)
			require.NoError(t, err)
		}
		return nil
	})
	msg := newMessage("evt-1", "placed")
	err := deliver(h, msg)
	require.Error(t, err, "a commit that failed must nack")
	require.Zero(t, b.effectsOf(t, "evt-1"), "nothing of the failed attempt persists")
	require.Zero(t, b.attempts(t, "orders", "evt-1"), "a database failure spends no attempt")

	require.NoError(t, deliver(h, msg), "the redelivery succeeds")
	require.Equal(t, 1, b.effectsOf(t, "evt-1"))

	// Commit, then a lost ack: the broker delivers again, and it is a duplicate.
	require.NoError(t, deliver(h, msg))
	require.Equal(t, int32(2), b.calls.Load())
	require.Equal(t, 1, b.effectsOf(t, "evt-1"))
	require.Zero(t, b.deadLetters(t))
}

func TestTransientTwiceThenSuccess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		if err := b.effect(msg.Context(), msg); err != nil {
			return err
		}
		if b.calls.Add(1) <= 2 {
			return errBoom // after the effect: it must roll back
		}
		return nil
	})
	require.NoError(t, deliver(h, newMessage("evt-1", "placed")))
	require.Equal(t, int32(3), b.calls.Load())
	require.Equal(t, 1, b.effectsOf(t, "evt-1"))
	require.Equal(t, 2, b.attempts(t, "orders", "evt-1"), "both failures are recorded")
	require.Zero(t, b.deadLetters(t))
}

func TestPermanentErrorIsDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		if err := b.effect(msg.Context(), msg); err != nil {
			return err
		}
		return retry.Permanent(fmt.Errorf("order %s: unknown currency %q", msg.Metadata.Get("event_id"), "XXX"))
	})
	require.NoError(t, deliver(h, newMessage("evt-1", "placed")), "a dead-lettered message is acked")
	require.Equal(t, int32(1), b.calls.Load(), "a permanent error is not retried")
	require.Zero(t, b.effectsOf(t, "evt-1"))
	dl := b.deadLetter(t, "orders", "evt-1")
	require.Equal(t, string(dlq.ReasonPermanent), dl.Reason)
	require.Equal(t, 1, dl.Attempts)
	require.Contains(t, dl.Error, "unknown currency")
	require.Equal(t, "pending", dl.Status)
	require.Equal(t, []byte("placed"), dl.Payload)
}

func TestExhaustedRetriesDeadLetterOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		return errBoom
	})
	msg := newMessage("evt-1", "placed")
	require.NoError(t, deliver(h, msg), "exhausted: dead-lettered and acked, never nacked forever")
	require.Equal(t, int32(3), b.calls.Load(), "MaxAttempts attempts")
	require.Equal(t, 1, b.deadLetters(t))
	dl := b.deadLetter(t, "orders", "evt-1")
	require.Equal(t, string(dlq.ReasonExhausted), dl.Reason)
	require.Equal(t, 3, dl.Attempts)
	require.Equal(t, 1, dl.Count)

	// The same event again (a replay that fails, or a lost ack): the row is updated.
	require.NoError(t, deliver(h, msg))
	require.Equal(t, 1, b.deadLetters(t), "never a second row")
	dl = b.deadLetter(t, "orders", "evt-1")
	require.Equal(t, 2, dl.Count)
	require.Equal(t, 4, dl.Attempts)
}

func TestAttemptsCountAcrossRedeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// In-process retrying is cut short by the ack deadline, so every delivery gets
	// one attempt; the count still reaches the cap across deliveries.
	c, err := consumer.New(consumer.Config{
		Store:       b.store,
		Retry:       retry.Policy{MaxAttempts: 3, InitialInterval: time.Second, MaxInterval: time.Second, MaxElapsedTime: time.Millisecond},
		AckDeadline: time.Second,
		Logger:      testLogger(t),
	})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		return errBoom
	})
	msg := newMessage("evt-1", "placed")
	require.ErrorIs(t, deliver(h, msg), errBoom, "first delivery: handed back")
	require.ErrorIs(t, deliver(h, msg), errBoom, "second delivery: handed back")
	require.Zero(t, b.deadLetters(t))
	require.NoError(t, deliver(h, msg), "third delivery: dead-lettered and acked")
	require.Equal(t, int32(3), b.calls.Load())
	require.Equal(t, 3, b.deadLetter(t, "orders", "evt-1").Attempts)
}

func TestShutdownNeverDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		cancel() // shutdown while the handler runs
		<-msg.Context().Done()
		return msg.Context().Err()
	})
	msg := newMessage("evt-1", "placed")
	msg.SetContext(ctx)
	require.Error(t, h(msg), "a shutdown nacks")
	require.Equal(t, int32(1), b.calls.Load())
	require.Zero(t, b.deadLetters(t))
	require.Zero(t, b.attempts(t, "orders", "evt-1"), "a shutdown spends no attempt")
}

func TestDatabaseOutageNeverDeadLetters(t *testing.T) {
	t.Parallel()

	t.Run("UnreachableServer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		cfg, err := pgxpool.ParseConfig("postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=1")
		require.NoError(t, err)
		down, err := pgxpool.NewWithConfig(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(down.Close)
		store, err := postgres.New(down, postgres.Config{Schema: b.store.Schema()})
		require.NoError(t, err)
		c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
		require.NoError(t, err)
		h := c.WrapConsumer("orders", func(msg *message.Message) error {
			b.calls.Add(1)
			return nil
		})
		for range 5 { // more deliveries than MaxAttempts
			err := deliver(h, newMessage("evt-1", "placed"))
			require.Error(t, err, "nacked")
			require.Equal(t, retry.ClassInfrastructure, postgres.Classify(err), "%v", err)
		}
		require.Zero(t, b.calls.Load(), "the handler never ran")
		require.Zero(t, b.deadLetters(t))
		require.Zero(t, b.attempts(t, "orders", "evt-1"))
	})

	t.Run("TerminatedBackend", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		h := b.consumer.WrapConsumer("orders", func(msg *message.Message) error {
			b.calls.Add(1)
			ctx := msg.Context()
			tx, _ := postgres.TxFromContext(ctx)
			var pid int
			if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				return err
			}
			if _, err := b.pool.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
				return err
			}
			return b.effect(ctx, msg) // fails: the connection is gone
		})
		for range 5 {
			require.Error(t, deliver(h, newMessage("evt-1", "placed")), "nacked")
		}
		require.Equal(t, int32(5), b.calls.Load(), "no in-process retries spent on an outage")
		require.Zero(t, b.deadLetters(t))
		require.Zero(t, b.attempts(t, "orders", "evt-1"))
		require.Zero(t, b.effectsOf(t, "evt-1"))
	})
}

func TestBadInputIsDeadLettered(t *testing.T) {
	t.Parallel()
	type order struct {
		ID    string `json:"id"`
		Total int    `json:"total"`
	}
	tests := []struct {
		name      string
		eventID   string
		noID      bool
		payload   string
		reason    dlq.Reason
		errSubstr string
	}{
		{name: "MissingID", noID: true, payload: `{"id":"a","total":1}`, reason: dlq.ReasonMalformed, errSubstr: "it is empty"},
		{name: "TooLongID", eventID: strings.Repeat("x", 201), payload: `{}`, reason: dlq.ReasonMalformed, errSubstr: "201 bytes long"},
		{name: "InvalidUTF8ID", eventID: "evt-\xff\xfe", payload: `{}`, reason: dlq.ReasonMalformed, errSubstr: "not valid UTF-8"},
		{name: "NULInID", eventID: "evt-\x00-1", payload: `{}`, reason: dlq.ReasonMalformed, errSubstr: "NUL byte"},
		{name: "NotJSON", eventID: "evt-1", payload: `not json`, reason: dlq.ReasonPermanent, errSubstr: "decode payload as consumer_test.order"},
		{name: "WrongType", eventID: "evt-2", payload: `{"id":"a","total":"ten"}`, reason: dlq.ReasonPermanent, errSubstr: "decode payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			h := b.consumer.WrapConsumer("orders", consumer.JSON(func(ctx context.Context, o order) error {
				b.calls.Add(1)
				return nil
			}))
			msg := newMessage(tt.eventID, tt.payload)
			require.NoError(t, deliver(h, msg), "dead-lettered and acked")
			require.NoError(t, deliver(h, msg), "a redelivery collapses into the same dead letter")
			require.Zero(t, b.calls.Load())
			require.Equal(t, 1, b.deadLetters(t))
			var reason, errText, payload, metadataID string
			require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT reason, error, convert_from(payload, 'UTF8'), coalesce(metadata->>'event_id', '') FROM "+
				pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()).Scan(&reason, &errText, &payload, &metadataID))
			require.Equal(t, string(tt.reason), reason)
			require.Contains(t, errText, tt.errSubstr)
			require.Equal(t, tt.payload, payload, "the payload is kept byte for byte")
		})
	}

	t.Run("MetadataKeptByteForByte", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		h := b.consumer.WrapConsumer("orders", func(*message.Message) error { return nil })
		msg := newMessage("evt-\x00\xff", "x")
		msg.Metadata.Set("weird", "\xff\x00ok")
		require.NoError(t, deliver(h, msg))
		var raw []byte
		require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT metadata::text::bytea FROM "+
			pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()).Scan(&raw))
		md, err := dlq.DecodeMetadata(raw)
		require.NoError(t, err)
		require.Equal(t, "evt-\x00\xff", md["event_id"])
		require.Equal(t, "\xff\x00ok", md["weird"])
	})
}

func TestConfigIsValidated(t *testing.T) {
	t.Parallel()
	_, err := consumer.New(consumer.Config{})
	require.ErrorContains(t, err, "Config.Store is required")

	store, _ := testdb.Store(t)
	_, err = consumer.New(consumer.Config{Store: store, Retry: retry.Policy{Multiplier: 0.5}})
	require.ErrorContains(t, err, "Multiplier")
	_, err = consumer.New(consumer.Config{Store: store, AckDeadline: 10 * time.Second})
	require.NoError(t, err, "with an ack deadline, MaxElapsedTime defaults to half of it")
	_, err = consumer.New(consumer.Config{Store: store, AckDeadline: 10 * time.Second, HandlerTimeout: 3 * time.Second})
	require.ErrorContains(t, err, "5 attempts × HandlerTimeout 3s")
	require.ErrorContains(t, err, "is not shorter than Config.AckDeadline 10s")
	_, err = consumer.New(consumer.Config{Store: store, AckDeadline: 10 * time.Second,
		Retry: retry.Policy{MaxAttempts: 10, MaxElapsedTime: 20 * time.Second}})
	require.ErrorContains(t, err, "Retry.MaxElapsedTime 20s")
	require.ErrorContains(t, err, "watermill-sql SubscriberConfig.AckDeadline", "the error says which setting to change")
	_, err = consumer.New(consumer.Config{Store: store, HandlerTimeout: -time.Second})
	require.ErrorContains(t, err, "HandlerTimeout")
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func testdbStore(t testing.TB, ignoreSubscriberTx bool) (*postgres.Store, *pgxpool.Pool) {
	t.Helper()
	pool := testdb.Pool(t)
	store, err := postgres.New(pool, postgres.Config{Schema: testdb.Schema(t, pool), IgnoreSubscriberTx: ignoreSubscriberTx})
	require.NoError(t, err)
	return store, pool
}

func testdbURL() string { return testdb.URL() }

func dedupKey(consumerName, eventID string) dedup.Key {
	return dedup.Key{Consumer: consumerName, EventID: eventID}
}

func TestHandlerTimeoutSpendsTheBudget(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), HandlerTimeout: 250 * time.Millisecond, Logger: testLogger(t)}) // long enough for the claim on a busy machine
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		b.calls.Add(1)
		<-msg.Context().Done() // hangs until its attempt times out
		return msg.Context().Err()
	})
	require.NoError(t, deliver(h, newMessage("evt-1", "x")), "a handler that hangs ends dead-lettered, not redelivered forever")
	require.Equal(t, int32(3), b.calls.Load())
	dl := b.deadLetter(t, "orders", "evt-1")
	require.Equal(t, string(dlq.ReasonExhausted), dl.Reason)
	require.Equal(t, 3, dl.Attempts)
}

func TestPoolExhaustionNeverDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	small := testdb.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	store, err := postgres.New(small, postgres.Config{Schema: b.store.Schema()})
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: store, Retry: fastPolicy(), Logger: testLogger(t)})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(*message.Message) error {
		b.calls.Add(1)
		return nil
	})
	held, err := small.Acquire(context.Background()) // every connection is busy
	require.NoError(t, err)
	defer held.Release()
	for range 5 { // more deliveries than MaxAttempts
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		msg := newMessage("evt-1", "placed")
		msg.SetContext(ctx)
		require.Error(t, h(msg), "nacked")
		cancel()
	}
	require.Zero(t, b.calls.Load())
	require.Zero(t, b.deadLetters(t))
	require.Zero(t, b.attempts(t, "orders", "evt-1"), "waiting for a connection spends no attempt")
}
