package transports_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// TestOrderingShuffledOnABrokerWithReplicas is consumer.TestOrderingShuffled on a
// real broker: NATS JetStream, whose deliver group hands the messages of one durable
// consumer to three replicas at once (two subscriptions each) and redelivers a nacked
// message behind the ones already sent. Each replica is a process of its own as far
// as PostgreSQL can tell: its own pool and postgres.Store on the shared schema. 500
// events of 50 entities are published shuffled, with 50 duplicate publishes. Under
// the strict gap policy every entity ends with its events applied once each, in
// sequence order; under apply, the applied events of each entity are in increasing
// order and end with its last. Nothing is dead-lettered, and the broker ends drained.
func TestOrderingShuffledOnABrokerWithReplicas(t *testing.T) {
	t.Parallel()
	const entities, perEntity, duplicates = 50, 10, 50
	url := testbroker.NATSURL(t)

	// run consumes the shuffled events with three replicas under ordering o, waits
	// until the broker has every message acked and nothing left, and returns the
	// sequence numbers applied to each entity, in commit order, the outcome of each
	// delivery, and how many times the handler ran.
	run := func(t *testing.T, o middleware.OrderingConfig) (map[string][]int64, map[dedup.Outcome]int, int64) {
		t.Helper()
		start := time.Now()
		shared, pool := testdb.Store(t)
		schema := shared.Schema()
		state := pgx.Identifier{schema, "state"}.Sanitize()
		ctx := context.Background()
		_, err := pool.Exec(ctx, "CREATE TABLE "+state+" (entity text PRIMARY KEY, seqs bigint[] NOT NULL)")
		require.NoError(t, err)
		br := natsBroker(t, url, natsAckWait, func(*nats.ConsumerConfig) {})

		var calls, acked, inFlight, handling, overlap atomic.Int64
		var mu sync.Mutex
		outcomes := map[dedup.Outcome]int{}
		perReplica := make([]int, replicas)
		for i := range replicas {
			store, err := postgres.New(testdb.Pool(t), postgres.Config{Schema: schema})
			require.NoError(t, err)
			t.Cleanup(store.Close)
			c, err := consumer.New(consumer.Config{
				Store:           store,
				Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
				AckDeadline:     br.ackDeadline,
				MessagingSystem: br.system,
				Ordering:        o,
				// Deferrals are logged as warnings, hundreds of them under strict.
				Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelError})).With("instance", i),
			})
			require.NoError(t, err)
			sub := tracked{Subscriber: br.subscriber(t, i), acked: &acked, inFlight: &inFlight}
			runRouter(t, func(r *message.Router) {
				r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
					return func(msg *message.Message) ([]*message.Message, error) {
						n := handling.Add(1)
						for m := overlap.Load(); n > m && !overlap.CompareAndSwap(m, n); m = overlap.Load() {
						}
						out, err := h(msg)
						handling.Add(-1)
						oc, _ := middleware.Outcome(msg.Context())
						mu.Lock()
						outcomes[oc]++
						perReplica[i]++
						mu.Unlock()
						return out, err
					}
				})
				c.AddConsumerHandler(r, "billing", br.topic, sub, func(msg *message.Message) error {
					calls.Add(1)
					ctx := msg.Context()
					tx, ok := postgres.TxFromContext(ctx)
					if !ok {
						return postgres.ErrNoTx
					}
					seq, err := strconv.ParseInt(msg.Metadata.Get(dedup.EntitySeqKey), 10, 64)
					if err != nil {
						return retry.Permanent(err)
					}
					_, err = tx.Exec(ctx, "INSERT INTO "+state+" AS s (entity, seqs) VALUES ($1, ARRAY[$2::bigint]) "+
						"ON CONFLICT (entity) DO UPDATE SET seqs = s.seqs || $2::bigint", msg.Metadata.Get(dedup.EntityIDKey), seq)
					return err
				})
			})
		}

		var msgs []*message.Message
		for e := range entities {
			for seq := int64(1); seq <= perEntity; seq++ {
				msgs = append(msgs, orderedEvent(fmt.Sprintf("ent%02d", e), seq))
			}
		}
		rand.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
		for range duplicates {
			// A duplicate publish of a random event (same event ID, new UUID), anywhere.
			dup := msgs[rand.IntN(entities*perEntity)]
			d := message.NewMessage(watermill.NewUUID(), dup.Payload)
			d.Metadata = maps.Clone(dup.Metadata)
			at := rand.IntN(len(msgs) + 1)
			msgs = append(msgs[:at], append([]*message.Message{d}, msgs[at:]...)...)
		}
		require.NoError(t, br.publisher.Publish(br.topic, msgs...))
		published := int64(len(msgs))

		var last string
		drained := func() bool {
			held, err := br.unfinished(ctx)
			require.NoError(t, err)
			last = fmt.Sprintf("acked %d/%d, in flight %d, broker: %q", acked.Load(), published, inFlight.Load(), held)
			return acked.Load() == published && inFlight.Load() == 0 && held == ""
		}
		if !assertEventually(drained, 30*time.Second) {
			t.Fatalf("not drained after 30s: %s", last)
		}

		rows, err := pool.Query(ctx, "SELECT entity, seqs FROM "+state)
		require.NoError(t, err)
		got := map[string][]int64{}
		for rows.Next() {
			var e string
			var s []int64
			require.NoError(t, rows.Scan(&e, &s))
			got[e] = s
		}
		require.NoError(t, rows.Err())
		var dead int
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "dead_letters"}.Sanitize()).Scan(&dead))
		require.Zero(t, dead, "nothing is dead-lettered")
		mu.Lock()
		defer mu.Unlock()
		require.Zero(t, outcomes[dedup.DeadLettered])
		for i, n := range perReplica {
			require.Positive(t, n, "replica %d took deliveries", i)
		}
		require.GreaterOrEqual(t, overlap.Load(), int64(2), "deliveries ran side by side")
		t.Logf("nats: %d messages, %d events, on %d replicas, in %s; deliveries per replica %v, up to %d at once; outcomes: %v",
			published, entities*perEntity, replicas, time.Since(start).Round(time.Millisecond), perReplica, overlap.Load(), outcomes)
		return got, maps.Clone(outcomes), calls.Load()
	}

	t.Run("Strict", func(t *testing.T) {
		t.Parallel()
		got, outcomes, calls := run(t, middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, GapTimeout: -1})
		want := make([]int64, perEntity)
		for i := range want {
			want[i] = int64(i + 1)
		}
		require.Len(t, got, entities)
		for e, s := range got {
			require.Equal(t, want, s, "entity %s: every event once, in order", e)
		}
		require.Equal(t, entities*perEntity, outcomes[dedup.Processed])
		// Every copy of an applied event is recognised as a duplicate by its claim,
		// never stale: each message is acked once, as processed or duplicate.
		require.Equal(t, duplicates, outcomes[dedup.Duplicate])
		require.Zero(t, outcomes[dedup.Stale])
		require.Positive(t, outcomes[dedup.Deferred], "shuffled events wait for the ones before them")
		require.Equal(t, int64(entities*perEntity), calls, "the handler runs only for events it applies")
	})

	t.Run("Apply", func(t *testing.T) {
		t.Parallel()
		got, outcomes, calls := run(t, middleware.OrderingConfig{Enabled: true})
		require.Len(t, got, entities)
		applied := 0
		for e, s := range got {
			require.IsIncreasing(t, s, "entity %s: no event applied after a later one", e)
			require.Equal(t, int64(perEntity), s[len(s)-1], "entity %s ends at its last event", e)
			applied += len(s)
		}
		require.Equal(t, applied, outcomes[dedup.Processed])
		require.Positive(t, outcomes[dedup.Stale], "shuffled deliveries leave stale events")
		require.Equal(t, entities*perEntity+duplicates, outcomes[dedup.Processed]+outcomes[dedup.Duplicate]+outcomes[dedup.Stale],
			"each message is acked once, as processed, duplicate or stale")
		require.Zero(t, outcomes[dedup.Deferred], "under apply nothing waits")
		require.Equal(t, int64(applied), calls, "the handler never runs for a stale event")
	})
}

// orderedEvent is event <entity>-<seq> of entity, numbered seq.
func orderedEvent(entity string, seq int64) *message.Message {
	msg := newMessage(fmt.Sprintf("%s-%d", entity, seq), "")
	msg.Metadata.Set(dedup.EntityIDKey, entity)
	msg.Metadata.Set(dedup.EntitySeqKey, strconv.FormatInt(seq, 10))
	return msg
}
