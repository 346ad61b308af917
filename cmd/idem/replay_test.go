package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqppub "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

func randomTopic(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// TestReplayEndToEnd dead-letters an event in a real consumer on watermill-sql, fixes
// the consumer's bug, replays the dead letter with the idem binary, and checks that
// the effect applies once, and that a second replay is a duplicate.
func TestReplayEndToEnd(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	schema := testdb.Schema(t, pool)
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	require.NoError(t, err)
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	_, err = pool.Exec(t.Context(), "CREATE TABLE "+effects+" (event_id text NOT NULL, replay text NOT NULL)")
	require.NoError(t, err)

	// watermill-sql with its default schema adapter, as the replay publishes to it.
	topic := randomTopic("idem_replay_")
	db := wsql.BeginnerFromPgx(pool)
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		SchemaAdapter:    wsql.DefaultPostgreSQLSchema{},
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		InitializeSchema: true,
		PollInterval:     10 * time.Millisecond,
		ResendInterval:   10 * time.Millisecond,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, sub.SubscribeInitialize(topic))
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = sub.Close()
		_ = pub.Close()
		ctx := context.Background()
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_" + topic}.Sanitize())
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_offsets_" + topic}.Sanitize())
	})

	// The handler has a bug until fixed is set; once fixed, the payment gateway fails
	// it once more (a transient blip the replayed copy must be allowed to retry).
	var fixed, blipped atomic.Bool
	var calls atomic.Int32
	var replayCount sync.Map // event ID -> idem_replay_count of the successful call
	c, err := consumer.New(consumer.Config{
		Store:  store,
		Retry:  retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	c.AddConsumerHandler(router, "billing", topic, sub, func(msg *message.Message) error {
		calls.Add(1)
		eventID := msg.Metadata.Get("event_id")
		if eventID == "evt-1" {
			if !fixed.Load() {
				return errors.New("billing: nil map write in applyDiscount")
			}
			if blipped.CompareAndSwap(false, true) {
				return errors.New("payment gateway unavailable (503)")
			}
		}
		tx, ok := postgres.TxFromContext(msg.Context())
		if !ok {
			return errors.New("no transaction")
		}
		replayCount.Store(eventID, msg.Metadata.Get(dlq.ReplayCountKey))
		_, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (event_id, replay) VALUES ($1, $2)", eventID, msg.Metadata.Get(dlq.ReplayCountKey))
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	<-router.Running()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, router.Close())
		require.NoError(t, <-done)
	})

	effectsOf := func(eventID string) int {
		var n int
		require.NoError(t, pool.QueryRow(t.Context(), "SELECT count(*) FROM "+effects+" WHERE event_id = $1", eventID).Scan(&n))
		return n
	}
	// sync publishes a sentinel event and waits for its effect: the subscriber
	// consumes in order, so every message before it was consumed.
	sentinels := 0
	sync := func() {
		sentinels++
		id := fmt.Sprintf("sentinel-%d", sentinels)
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
		msg.Metadata.Set("event_id", id)
		require.NoError(t, pub.Publish(topic, msg))
		require.Eventually(t, func() bool { return effectsOf(id) == 1 }, 20*time.Second, 10*time.Millisecond)
	}

	// The bug dead-letters the event after its two attempts.
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":"ord-1","total_cents":1250}`))
	msg.Metadata.Set("event_id", "evt-1")
	msg.Metadata.Set("correlation_id", "corr-1")
	require.NoError(t, pub.Publish(topic, msg))
	sync()
	recs, err := store.List(t.Context(), dlq.Filter{})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	dead := recs[0]
	require.Equal(t, "evt-1", dead.EventID)
	require.Equal(t, dlq.ReasonExhausted, dead.Reason)
	require.Zero(t, effectsOf("evt-1"))

	// Fixed; replay it through watermill-sql (the publish URL defaults to the
	// database's).
	fixed.Store(true)
	dbArgs := []string{"--database-url", testdb.URL(), "--schema", schema}
	res := exe(t, "", nil, append([]string{"dlq", "replay", fmt.Sprint(dead.ID)}, dbArgs...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "dry run: would replay 1 dead letter to postgres://")
	require.Zero(t, effectsOf("evt-1"), "a dry run publishes nothing")

	res = exe(t, "", nil, append([]string{"dlq", "replay", fmt.Sprint(dead.ID), "--yes", "--reason", "fixed in v1.4.2"}, dbArgs...)...)
	require.Equal(t, 0, res.code, res.stderr)
	require.Regexp(t, fmt.Sprintf(`^replayed %d \(billing, event evt-1\) to %s: replay 1, audit entry \d+\nreplayed 1 dead letter to postgres://`, dead.ID, topic), res.stdout)
	require.Empty(t, res.stderr)
	sync()
	require.Equal(t, 1, effectsOf("evt-1"), "the effect applies once")
	rc, _ := replayCount.Load("evt-1")
	require.Equal(t, "1", rc, "the replayed copy carries its replay count")
	require.True(t, blipped.Load(), "the replayed copy failed once, and was retried: it had a whole budget again")
	rec, err := store.Get(t.Context(), dead.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusReplayed, rec.Status)
	require.Equal(t, 1, rec.ReplayCount)
	require.Equal(t, 1, rec.Count, "not dead-lettered again")

	// Replayed again: a duplicate, applied nothing.
	before := calls.Load()
	res = exe(t, "", nil, append([]string{"dlq", "replay", fmt.Sprint(dead.ID), "--yes", "--format", "json"}, dbArgs...)...)
	require.Equal(t, 0, res.code, res.stderr)
	var out changeJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, []int64{dead.ID}, out.Published)
	require.Equal(t, []int64{dead.ID}, out.Changed)
	require.Nil(t, out.Error)
	sync()
	require.Equal(t, 1, effectsOf("evt-1"), "the second replay is a duplicate")
	require.Equal(t, before+1, calls.Load(), "only the sentinel reached the handler")
	rec, err = store.Get(t.Context(), dead.ID)
	require.NoError(t, err)
	require.Equal(t, 2, rec.ReplayCount)

	audit, err := store.Audit(t.Context(), dlq.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, audit, 2, "one audit row per replay")
	for _, a := range audit {
		require.Equal(t, dlq.ActionReplay, a.Action)
		require.Equal(t, []int64{dead.ID}, a.DeadLetterIDs)
		require.Equal(t, fmt.Sprintf("ids=%d", dead.ID), a.Selector)
	}
	require.Equal(t, "fixed in v1.4.2", audit[0].Reason)
}

// replaySeed stores a dead letter as the consumer would, in a new SQLite database,
// and returns the database's path.
func replaySeed(t *testing.T, letters ...*dlq.DeadLetter) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "idem.db")
	store, err := sqlite.Open(t.Context(), path, sqlite.Config{Migrate: true})
	require.NoError(t, err)
	defer store.Close()
	for _, d := range letters {
		_, err := store.Put(t.Context(), d)
		require.NoError(t, err)
	}
	return path
}

func letterFor(topic, eventID string) *dlq.DeadLetter {
	return &dlq.DeadLetter{
		Consumer: "billing", EventID: eventID, Topic: topic, Handler: "billing", MessageUUID: watermill.NewUUID(),
		Payload:  []byte(`{"order":"ord-1"}`),
		Metadata: map[string]string{"event_id": eventID, "correlation_id": "corr-1", "authorization": "REDACTED"},
		Reason:   dlq.ReasonPermanent, Error: "boom", Fingerprint: "f1", Attempts: 1,
	}
}

// requireReplayed checks the replayed copy of letterFor(topic, eventID).
func requireReplayed(t *testing.T, msg *message.Message, eventID string) {
	t.Helper()
	require.Equal(t, `{"order":"ord-1"}`, string(msg.Payload))
	require.Equal(t, eventID, msg.Metadata.Get("event_id"))
	require.Equal(t, "corr-1", msg.Metadata.Get("correlation_id"))
	require.Equal(t, "REDACTED", msg.Metadata.Get("authorization"))
	require.Equal(t, "1", msg.Metadata.Get(dlq.ReplayCountKey))
	require.NotEmpty(t, msg.UUID)
}

func TestReplayTransports(t *testing.T) {
	t.Parallel()

	t.Run("AMQP", func(t *testing.T) {
		t.Parallel()
		url := testbroker.AMQPURL(t)
		topic := randomTopic("idem_replay_")
		sub, err := amqppub.NewSubscriber(amqppub.NewDurableQueueConfig(url), watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = sub.Close()
			if conn, err := amqp.Dial(url); err == nil {
				if ch, err := conn.Channel(); err == nil {
					_, _ = ch.QueueDelete(topic, false, false, false)
				}
				conn.Close()
			}
		})
		msgs, err := sub.Subscribe(t.Context(), topic) // declares the queue
		require.NoError(t, err)
		path := replaySeed(t, letterFor(topic, "evt-amqp"), letterFor("idem_no_such_queue_"+topic, "evt-lost"))

		res := exe(t, "", nil, "dlq", "replay", "1", "--yes", "--database-url", path, "--publish-url", url)
		require.Equal(t, 0, res.code, res.stderr)
		require.NotContains(t, res.stdout+res.stderr, "guest:guest")
		require.Contains(t, res.stdout, "replayed 1 dead letter to amqp://REDACTED@")
		select {
		case msg := <-msgs:
			requireReplayed(t, msg, "evt-amqp")
			msg.Ack()
		case <-time.After(10 * time.Second):
			t.Fatal("the replayed message did not arrive")
		}

		// A queue nobody declared: refused before anything is published.
		res = exe(t, "", nil, "dlq", "replay", "2", "--yes", "--database-url", path, "--publish-url", url)
		require.Equal(t, 1, res.code, res.stderr)
		require.Contains(t, res.stderr, `cannot replay to topic "idem_no_such_queue_`)
		require.Contains(t, res.stderr, "NOT_FOUND")
		require.Equal(t, "stopped: replayed 0 of 1 dead letter\n", res.stdout)
	})

	t.Run("NATS", func(t *testing.T) {
		t.Parallel()
		url := testbroker.NATSURL(t)
		topic := randomTopic("idem_replay_")
		nc, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		js, err := nc.JetStream()
		require.NoError(t, err)
		_, err = js.AddStream(&nats.StreamConfig{Name: topic, Subjects: []string{topic}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = js.DeleteStream(topic) })
		path := replaySeed(t, letterFor(topic, "evt-nats"), letterFor("idem_no_stream_"+topic, "evt-lost"))

		res := exe(t, "", nil, "dlq", "replay", "--all", "--topic", topic, "--yes", "--database-url", "sqlite:"+path, "--publish-url", url)
		require.Equal(t, 0, res.code, res.stderr)
		raw, err := js.GetLastMsg(topic, topic)
		require.NoError(t, err)
		msg, err := (&natspub.NATSMarshaler{}).Unmarshal(&nats.Msg{Subject: raw.Subject, Data: raw.Data, Header: raw.Header})
		require.NoError(t, err)
		requireReplayed(t, msg, "evt-nats")

		res = exe(t, "", nil, "dlq", "replay", "2", "--yes", "--database-url", path, "--publish-url", url)
		require.Equal(t, 1, res.code, res.stderr)
		require.Contains(t, res.stderr, `no JetStream stream holds subject "idem_no_stream_`)
	})

	t.Run("Redis", func(t *testing.T) {
		t.Parallel()
		url := testbroker.RedisURL(t)
		topic := randomTopic("idem_replay_")
		opts, err := redis.ParseURL(url)
		require.NoError(t, err)
		client := redis.NewClient(opts)
		t.Cleanup(func() {
			_ = client.Del(context.Background(), topic).Err()
			_ = client.Close()
		})
		require.NoError(t, client.XGroupCreateMkStream(t.Context(), topic, "billing", "$").Err())
		path := replaySeed(t, letterFor(topic, "evt-redis"), letterFor("idem_no_stream_"+topic, "evt-lost"),
			letterFor(topic, "evt-r3"), letterFor(topic, "evt-r4"), letterFor(topic, "evt-r5"))

		res := exe(t, "", map[string]string{envPublishURL: url}, "dlq", "replay", "1", "--yes", "--database-url", path)
		require.Equal(t, 0, res.code, res.stderr)
		entries, err := client.XRange(t.Context(), topic, "-", "+").Result()
		require.NoError(t, err)
		require.Len(t, entries, 1)
		msg, err := redisstream.DefaultMarshallerUnmarshaller{}.Unmarshal(entries[0].Values)
		require.NoError(t, err)
		requireReplayed(t, msg, "evt-redis")

		res = exe(t, "", map[string]string{envPublishURL: url}, "dlq", "replay", "2", "--yes", "--database-url", path)
		require.Equal(t, 1, res.code, res.stderr)
		require.Contains(t, res.stderr, `stream "idem_no_stream_`)
		n, err := client.Exists(t.Context(), "idem_no_stream_"+topic).Result()
		require.NoError(t, err)
		require.Zero(t, n, "nothing was published")

		// --rate spaces the publishes: three at 10/s take at least 200ms.
		start := time.Now()
		res = exe(t, "", map[string]string{envPublishURL: url}, "dlq", "replay", "--topic", topic, "--rate", "10", "--yes", "--database-url", path)
		require.Equal(t, 0, res.code, res.stderr)
		require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
		require.Contains(t, res.stdout, "replayed 3 dead letters to redis://")
		entries, err = client.XRange(t.Context(), topic, "-", "+").Result()
		require.NoError(t, err)
		require.Len(t, entries, 4)
	})
}

func TestReplayRefusals(t *testing.T) {
	t.Parallel()
	derived := letterFor("orders", "derived:5d41402abc4b2a76b9719d911017c592")
	derived.Reason = dlq.ReasonMalformed
	reduced := dlq.Reduce(letterFor("orders", "evt-3"), errors.New("ERROR: invalid byte sequence (SQLSTATE 22021)"))
	path := replaySeed(t, letterFor("orders", "evt-1"), derived, reduced)

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"dlq", "replay", "2", "--yes", "--publish-url", "redis://127.0.0.1:1"}, 1,
			"idem: cannot replay 1 dead letter, nothing was published:\n  dead letter 2: no event ID: the message had none (reason malformed)"},
		{[]string{"dlq", "replay", "3", "--yes", "--publish-url", "redis://127.0.0.1:1"}, 1,
			"idem: cannot replay 1 dead letter, nothing was published:\n  dead letter 3: kept in reduced form: the store refused its data, so neither its payload nor its metadata was kept (payload 17 bytes, sha256 "},
		{[]string{"dlq", "replay", "--all", "--yes"}, 2, "idem: no publish URL: on a SQLite database, set --publish-url or $IDEM_PUBLISH_URL"},
		{[]string{"dlq", "replay", "--all", "--publish-url", "kafka://broker:9092"}, 2, "unsupported publish URL kafka://broker:9092"},
		{[]string{"dlq", "replay", "--all", "--publish-url", "redis://127.0.0.1:1", "--rate", "-1"}, 2, "idem: --rate must be 0 (no limit) or from 0.001 to 10000 messages per second, got -1"},
		{[]string{"dlq", "replay", "1", "--yes", "--publish-url", "redis://:s3cr3tpw@127.0.0.1:1"}, 1, "idem: cannot connect to redis://REDACTED@127.0.0.1:1"},
	} {
		res := exe(t, "", nil, append(tc.args, "--database-url", path)...)
		require.Equal(t, tc.code, res.code, "%v: %s", tc.args, res.stderr)
		require.Contains(t, res.stderr, tc.want, tc.args)
		require.NotContains(t, res.stderr, "s3cr3tpw")
	}

	// A rate that is not a finite number in range is refused before anything connects:
	// none of them may reach the ticker, where a zero or negative interval panics.
	for _, rate := range []string{"1e10", "1e300", "10000.5", "Inf", "+Inf", "-Inf", "NaN", "1e-12", "0.0009", "-0.5"} {
		res := exe(t, "", nil, "dlq", "replay", "1", "--yes", "--rate", rate, "--database-url", path, "--publish-url", "redis://127.0.0.1:1")
		require.Equal(t, 2, res.code, "--rate %s: %s", rate, res.stderr)
		require.Contains(t, res.stderr, "idem: --rate must be 0 (no limit) or from 0.001 to 10000 messages per second, got ", rate)
		require.NotContains(t, res.stderr, "panic", rate)
		require.Empty(t, res.stdout, rate)
	}

	// By filter, the dead letters without an event ID or a payload are left out, and said so.
	res := exe(t, "", nil, "dlq", "replay", "--all", "--database-url", path, "--publish-url", "redis://127.0.0.1:1")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "refused 2 dead letters that cannot be replayed (no event ID, or kept in reduced form): 2, 3")
	require.Contains(t, res.stdout, "dry run: would replay 1 dead letter to redis://127.0.0.1:1; nothing was published.")

	store, err := sqlite.Open(t.Context(), path, sqlite.Config{})
	require.NoError(t, err)
	defer store.Close()
	audit, err := store.Audit(t.Context(), dlq.AuditFilter{})
	require.NoError(t, err)
	require.Empty(t, audit, "nothing was replayed")
}

// TestReplayStopsAtPublishError replays four dead letters to watermill-sql, whose topic
// table takes JSON payloads only: the third, binary, fails to publish. Replay stops
// there, and only the two it published are marked replayed and have their counted
// attempts forgotten; the third and the fourth keep theirs, and their status.
func TestReplayStopsAtPublishError(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	topic := randomTopic("idem_replay_")
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		SchemaAdapter: wsql.DefaultPostgreSQLSchema{}, OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{}, InitializeSchema: true,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, sub.SubscribeInitialize(topic)) // a payload column of type JSON
	t.Cleanup(func() {
		_ = sub.Close()
		ctx := context.Background()
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_" + topic}.Sanitize())
		_, _ = pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{"watermill_offsets_" + topic}.Sanitize())
	})
	letters := func() []*dlq.DeadLetter {
		var out []*dlq.DeadLetter
		for i := 1; i <= 4; i++ {
			d := letterFor(topic, fmt.Sprintf("evt-%d", i))
			d.Attempts = 3
			if i == 3 {
				d.Payload = []byte{0x00, 0xff, 'x'} // not JSON: the topic table refuses it
			}
			out = append(out, d)
		}
		return out
	}

	type attemptsReader func(t *testing.T) map[string]int
	for _, backend := range []struct {
		name  string
		setup func(t *testing.T) (db []string, attempts attemptsReader, reviewer dlq.Reviewer)
	}{
		{"PostgreSQL", func(t *testing.T) ([]string, attemptsReader, dlq.Reviewer) {
			schema := testdb.Schema(t, pool)
			store, err := postgres.New(pool, postgres.Config{Schema: schema})
			require.NoError(t, err)
			for _, d := range letters() {
				_, err := store.Put(t.Context(), d)
				require.NoError(t, err)
				for range 3 {
					_, err := store.RecordFailure(t.Context(), dedup.Key{Consumer: d.Consumer, EventID: d.EventID}, "boom")
					require.NoError(t, err)
				}
			}
			read := func(t *testing.T) map[string]int {
				rows, err := pool.Query(t.Context(), "SELECT event_id, attempts FROM "+pgx.Identifier{schema, "attempts"}.Sanitize())
				require.NoError(t, err)
				out := map[string]int{}
				for rows.Next() {
					var id string
					var n int
					require.NoError(t, rows.Scan(&id, &n))
					out[id] = n
				}
				require.NoError(t, rows.Err())
				return out
			}
			return []string{"--database-url", testdb.URL(), "--schema", schema}, read, store
		}},
		{"SQLite", func(t *testing.T) ([]string, attemptsReader, dlq.Reviewer) {
			path := filepath.Join(t.TempDir(), "idem.db")
			store, err := sqlite.Open(t.Context(), path, sqlite.Config{Migrate: true})
			require.NoError(t, err)
			t.Cleanup(func() { _ = store.Close() })
			for _, d := range letters() {
				_, err := store.Put(t.Context(), d)
				require.NoError(t, err)
				for range 3 {
					_, err := store.RecordFailure(t.Context(), dedup.Key{Consumer: d.Consumer, EventID: d.EventID}, "boom")
					require.NoError(t, err)
				}
			}
			read := func(t *testing.T) map[string]int {
				rows, err := store.DB().QueryContext(t.Context(), "SELECT event_id, attempts FROM attempts")
				require.NoError(t, err)
				defer rows.Close()
				out := map[string]int{}
				for rows.Next() {
					var id string
					var n int
					require.NoError(t, rows.Scan(&id, &n))
					out[id] = n
				}
				require.NoError(t, rows.Err())
				return out
			}
			return []string{"--database-url", path, "--publish-url", testdb.URL()}, read, store
		}},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db, attempts, reviewer := backend.setup(t)
			require.Equal(t, map[string]int{"evt-1": 3, "evt-2": 3, "evt-3": 3, "evt-4": 3}, attempts(t))

			res := exe(t, "", nil, append([]string{"dlq", "replay", "--all", "--yes", "--format", "json"}, db...)...)
			require.Equal(t, 1, res.code, res.stderr)
			require.Contains(t, res.stderr, "idem: publishing dead letter 3 to topic")
			var out changeJSON
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
			require.Equal(t, []int64{1, 2}, out.Published)
			require.Equal(t, []int64{1, 2}, out.Changed)
			require.Len(t, out.AuditIDs, 2)
			require.NotNil(t, out.Error)

			require.Equal(t, map[string]int{"evt-3": 3, "evt-4": 3}, attempts(t),
				"only the published dead letters have their attempts forgotten")
			for id, want := range map[int64]dlq.Status{1: dlq.StatusReplayed, 2: dlq.StatusReplayed, 3: dlq.StatusPending, 4: dlq.StatusPending} {
				rec, err := reviewer.Get(t.Context(), id)
				require.NoError(t, err)
				require.Equal(t, want, rec.Status, id)
				require.Equal(t, map[bool]int{true: 1, false: 0}[want == dlq.StatusReplayed], rec.ReplayCount, id)
			}
			audit, err := reviewer.Audit(t.Context(), dlq.AuditFilter{})
			require.NoError(t, err)
			require.Len(t, audit, 2)
			require.Equal(t, []int64{1}, audit[0].DeadLetterIDs)
			require.Equal(t, []int64{2}, audit[1].DeadLetterIDs)
		})
	}
}
