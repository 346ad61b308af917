package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

// The release test runs this test binary again as a consumer process (releaseChild)
// on a schema and a watermill-sql topic of the parent's, set as "<schema> <topic>
// <mode>". The mode says where the process is killed:
//
//   - "handler": consuming, with the delayed retries running; the handler of A-5,
//     the second released event, prints "applied A-5" once its effect is written, and
//     hangs before the commit.
//   - "redeliverer": the same, but the delayed retries' publisher prints "published
//     A-5" once it published A-5, and hangs in the transaction that takes the due
//     events, before they are removed.
//   - "review=<id>": it replays dead letter id; the publish prints "published the
//     replay" once the copy is on the topic, and hangs in the review's transaction.
const releaseChildEnv = "IDEM_TEST_RELEASE_CHILD"

// releaseSubscriber is watermill-sql on pool, one message per transaction:
// each event's effects commit on their own, so a kill lands between two of them.
func releaseSubscriber(pool *pgxpool.Pool) (*wsql.Subscriber, error) {
	return wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		SchemaAdapter:  wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }, SubscribeBatchSize: 1},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   10 * time.Millisecond,
		ResendInterval: time.Millisecond,
	}, watermill.NopLogger{})
}

// releaseConsumer is the quarantining consumer of the release test, which publishes
// released events through pub.
func releaseConsumer(store *postgres.Store, pub message.Publisher, logger *slog.Logger) (*consumer.Consumer, error) {
	return consumer.New(consumer.Config{
		Store:        store,
		Retry:        fastPolicy(),
		Ordering:     middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, Quarantine: true},
		DelayedRetry: consumer.DelayedRetryConfig{Publisher: pub, Interval: 10 * time.Millisecond},
		Logger:       logger,
	})
}

// hangingPublisher publishes, then, once it published the event hangOn, prints
// "published <hangOn>" and hangs until the process is killed.
type hangingPublisher struct {
	message.Publisher
	hangOn string
}

func (p hangingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Metadata.Get("event_id") == p.hangOn {
			fmt.Println("published " + p.hangOn)
			select {}
		}
	}
	return nil
}

func releaseChild() int {
	fail := func(err error) int {
		fmt.Println("error:", err)
		return 2
	}
	fields := strings.Fields(os.Getenv(releaseChildEnv))
	if len(fields) != 3 {
		return fail(fmt.Errorf("%s=%q: want <schema> <topic> <mode>", releaseChildEnv, os.Getenv(releaseChildEnv)))
	}
	schema, topic, mode := fields[0], fields[1], fields[2]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		return fail(err)
	}
	defer store.Close()
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{
		SchemaAdapter: wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }},
	}, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}

	if id, ok := strings.CutPrefix(mode, "review="); ok {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil {
			return fail(err)
		}
		_, err = store.Replay(ctx, dlq.Change{IDs: []int64{n}, Selector: "ids=" + id}, func() error {
			if err := pub.Publish(topic, entityEvent("A", 3)); err != nil {
				return err
			}
			fmt.Println("published the replay")
			select {}
		})
		return fail(err)
	}

	var delayed message.Publisher = pub
	if mode == "redeliverer" {
		delayed = hangingPublisher{Publisher: pub, hangOn: "A-5"}
	}
	c, err := releaseConsumer(store, delayed, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return fail(err)
	}
	sub, err := releaseSubscriber(pool)
	if err != nil {
		return fail(err)
	}
	state := pgx.Identifier{schema, "state"}.Sanitize()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	c.AddConsumerHandler(r, "orders", topic, sub, func(msg *message.Message) error {
		ctx := msg.Context()
		tx, ok := postgres.TxFromContext(ctx)
		if !ok {
			return postgres.ErrNoTx
		}
		id := msg.Metadata.Get("event_id")
		seq, _ := strconv.ParseInt(msg.Metadata.Get(dedup.EntitySeqKey), 10, 64)
		if _, err := tx.Exec(ctx, "INSERT INTO "+state+" AS s (entity, seqs) VALUES ($1, ARRAY[$2::bigint]) "+
			"ON CONFLICT (entity) DO UPDATE SET seqs = s.seqs || $2::bigint", msg.Metadata.Get(dedup.EntityIDKey), seq); err != nil {
			return err
		}
		if id == "A-5" && mode == "handler" {
			fmt.Println("applied A-5")
			select {} // hang before the commit until killed
		}
		return nil
	})
	go func() { _ = c.RunDelayedRetries(ctx) }()
	_ = r.Run(ctx) // until killed, or the timeout
	fmt.Println("not killed")
	return 1
}

// releaseBundle is the state TestOrderingReleaseSurvivesAKill starts from: events
// A-1 … A-8 consumed by a quarantining consumer, A-3 poison: applied, A-3
// dead-lettered (id), A-4 … A-8 parked behind it. Nothing consumes any more; the
// handler is fixed.
type releaseBundle struct {
	*orderingBundle
	br *sqlBroker
	id int64
}

const releaseLast = 8 // A-1 … A-8

func setupRelease(t *testing.T) *releaseBundle {
	t.Helper()
	b := &releaseBundle{orderingBundle: setupOrdering(t)}
	b.poison.Store("A-3", true)
	b.br = newSQLBroker(t, b.pool)
	stop, _ := b.consume(t)
	for seq := int64(1); seq <= releaseLast; seq++ {
		b.br.publish(t, entityEvent("A", seq))
	}
	require.Eventually(t, func() bool { return b.drained(t) }, 20*time.Second, 10*time.Millisecond)
	stop()
	require.Equal(t, []int64{1, 2}, b.seqs(t)["A"])
	require.NoError(t, b.pool.QueryRow(t.Context(), "SELECT id FROM "+b.table("dead_letters")+" WHERE event_id = 'A-3'").Scan(&b.id))
	rec, err := b.store.Get(t.Context(), b.id)
	require.NoError(t, err)
	require.Equal(t, releaseLast-3, rec.Parked, "A-4 … A-8 are parked")
	require.Equal(t, 1, b.deadLetters(t))
	b.poison.Delete("A-3")
	return b
}

func (b *releaseBundle) table(name string) string {
	return pgx.Identifier{b.store.Schema(), name}.Sanitize()
}

// consume runs a quarantining consumer in this process, with its delayed retries,
// until stop is called (or the test ends). outcomes counts how its deliveries ended.
func (b *releaseBundle) consume(t *testing.T) (stop func(), outcomes func() map[dedup.Outcome]int) {
	t.Helper()
	c, err := releaseConsumer(b.store, b.br.pub, testLogger(t))
	require.NoError(t, err)
	sub, err := releaseSubscriber(b.pool)
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	var mu sync.Mutex
	counts := map[dedup.Outcome]int{}
	r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			o, _ := middleware.Outcome(msg.Context())
			mu.Lock()
			counts[o]++
			mu.Unlock()
			return out, err
		}
	})
	c.AddConsumerHandler(r, "orders", b.br.topic, sub, func(msg *message.Message) error {
		_, err := b.handler(msg)
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	routed, redelivered := make(chan error, 1), make(chan error, 1)
	go func() { routed <- r.Run(ctx) }()
	go func() { redelivered <- c.RunDelayedRetries(ctx) }()
	<-r.Running()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, r.Close())
		require.NoError(t, <-routed)
		require.NoError(t, <-redelivered)
	}
	t.Cleanup(stop)
	return stop, func() map[dedup.Outcome]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(counts)
	}
}

// drained reports whether the consumer group acked the topic's last message, and no
// event waits in the delayed retries.
func (b *releaseBundle) drained(t *testing.T) bool {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM `+b.table("delayed")) == 0 &&
		b.count(t, `SELECT count(*) FROM `+pgx.Identifier{"watermill_offsets_" + b.br.topic}.Sanitize()+` AS o
WHERE o.consumer_group = '' AND o.offset_acked = (SELECT "offset" FROM `+pgx.Identifier{"watermill_" + b.br.topic}.Sanitize()+`
    ORDER BY transaction_id DESC, "offset" DESC LIMIT 1)`) == 1
}

// replay replays the dead letter A-3 in this process, publishing a copy of it.
func (b *releaseBundle) replay(t *testing.T) dlq.AuditEntry {
	t.Helper()
	entry, err := b.store.Replay(t.Context(), dlq.Change{IDs: []int64{b.id}, Selector: "ids=" + strconv.FormatInt(b.id, 10)}, func() error {
		return b.br.pub.Publish(b.br.topic, entityEvent("A", 3))
	})
	require.NoError(t, err)
	return entry
}

// child runs the release child in mode, and checks that it was killed where mode
// says.
func (b *releaseBundle) child(t *testing.T, mode, killOn string) {
	t.Helper()
	killed, out := runChild(t, releaseChildEnv+"="+b.store.Schema()+" "+b.br.topic+" "+mode, killOn)
	require.True(t, killed, "the child prints %q and is killed; output:\n%s", killOn, out)
}

// finish consumes in this process until everything is applied and drained, and
// checks that every event of A was applied once, in sequence order, nothing is left
// parked or delayed, and the dead letter is replayed, alone.
func (b *releaseBundle) finish(t *testing.T) {
	t.Helper()
	stop, outcomes := b.consume(t)
	want := []int64{1, 2, 3, 4, 5, 6, 7, 8}
	require.Eventually(t, func() bool { return len(b.seqs(t)["A"]) >= len(want) && b.drained(t) }, 20*time.Second, 10*time.Millisecond,
		"A's events are applied; applied so far: %v", b.seqs(t)["A"])
	stop()
	require.Equal(t, want, b.seqs(t)["A"], "every event once, in sequence order")
	o := outcomes()
	t.Logf("the last consumer's outcomes: %v", o)
	require.Positive(t, o[dedup.Processed])
	require.Zero(t, o[dedup.Stale], "a second copy of an applied event is a duplicate, never stale")
	require.Zero(t, o[dedup.DeadLettered])
	require.Zero(t, b.count(t, "SELECT count(*) FROM "+b.table("parked_events")), "nothing stays parked")
	rec, err := b.store.Get(t.Context(), b.id)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusReplayed, rec.Status)
	require.Zero(t, rec.Parked)
	require.Equal(t, 1, b.deadLetters(t), "no new dead letter")
	require.Equal(t, 1, b.deadLetter(t, "orders", "A-3").Count, "A-3 was not dead-lettered again")
	m, err := b.store.Mark(t.Context(), "orders", "A")
	require.NoError(t, err)
	require.Equal(t, int64(releaseLast), m)
}

// TestOrderingReleaseSurvivesAKill: under quarantine, the events parked behind a dead
// letter and released by its replay are applied once each, in sequence order, even
// when the consumer process applying them is killed (SIGKILL) in the middle: in the
// handler of the second released event, before its commit, or in the delayed
// retries, after publishing it and before removing the released events. A kill
// during the review itself releases nothing and leaves the dead letter pending;
// replaying it again releases everything, once.
func TestOrderingReleaseSurvivesAKill(t *testing.T) {
	t.Parallel()

	t.Run("InTheHandler", func(t *testing.T) {
		t.Parallel()
		b := setupRelease(t)
		require.Equal(t, "ids="+strconv.FormatInt(b.id, 10)+" parked=release:5", b.replay(t).Selector)
		b.child(t, "handler", "applied A-5")
		require.Equal(t, []int64{1, 2, 3, 4}, b.seqs(t)["A"], "A-5's effect died with its transaction")
		b.finish(t)
	})

	t.Run("InTheRedeliverer", func(t *testing.T) {
		t.Parallel()
		b := setupRelease(t)
		b.replay(t)
		b.child(t, "redeliverer", "published A-5")
		require.Equal(t, releaseLast-3, b.count(t, "SELECT count(*) FROM "+b.table("delayed")),
			"the released events stay in the delayed retries until their publish is recorded")
		b.finish(t) // publishes a second time: duplicates
	})

	t.Run("InTheReview", func(t *testing.T) {
		t.Parallel()
		b := setupRelease(t)
		b.child(t, "review="+strconv.FormatInt(b.id, 10), "published the replay")
		rec, err := b.store.Get(t.Context(), b.id)
		require.NoError(t, err)
		require.Equal(t, dlq.StatusPending, rec.Status, "the review did not commit")
		require.Equal(t, releaseLast-3, rec.Parked, "nothing is released")
		require.Zero(t, b.count(t, "SELECT count(*) FROM "+b.table("delayed")))
		require.Zero(t, b.count(t, "SELECT count(*) FROM "+b.table("dead_letter_audit")+" WHERE action = 'replay'"))

		// The copy the killed review published is applied; the rest stays parked
		// until a review commits.
		stop, _ := b.consume(t)
		require.Eventually(t, func() bool { return b.drained(t) && len(b.seqs(t)["A"]) == 3 }, 20*time.Second, 10*time.Millisecond)
		stop()
		require.Equal(t, []int64{1, 2, 3}, b.seqs(t)["A"])
		rec, err = b.store.Get(t.Context(), b.id)
		require.NoError(t, err)
		require.Equal(t, releaseLast-3, rec.Parked, "still parked")

		require.Equal(t, "ids="+strconv.FormatInt(b.id, 10)+" parked=release:5", b.replay(t).Selector)
		b.finish(t)
	})
}
