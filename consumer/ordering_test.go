package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// orderingBundle is a PostgreSQL store with a state table: each entity's row lists
// the sequence numbers applied to it, in the order their transactions committed.
type orderingBundle struct {
	*testBundle
	state string // quoted table name
	calls atomic.Int64
	// poison makes the handler fail permanently on the events whose ID it holds.
	poison sync.Map
}

func setupOrdering(t *testing.T) *orderingBundle {
	t.Helper()
	b := &orderingBundle{testBundle: setup(t)}
	b.state = pgx.Identifier{b.store.Schema(), "state"}.Sanitize()
	_, err := b.pool.Exec(context.Background(), "CREATE TABLE "+b.state+" (entity text PRIMARY KEY, seqs bigint[] NOT NULL)")
	require.NoError(t, err)
	return b
}

// handler appends the event's sequence number to its entity's row, through the
// attempt's transaction.
func (b *orderingBundle) handler(msg *message.Message) ([]*message.Message, error) {
	b.calls.Add(1)
	if _, ok := b.poison.Load(msg.Metadata.Get("event_id")); ok {
		return nil, retry.Permanent(errBoom)
	}
	tx, ok := postgres.TxFromContext(msg.Context())
	if !ok {
		return nil, postgres.ErrNoTx
	}
	seq, _ := strconv.ParseInt(msg.Metadata.Get(dedup.EntitySeqKey), 10, 64)
	_, err := tx.Exec(msg.Context(), "INSERT INTO "+b.state+" AS s (entity, seqs) VALUES ($1, ARRAY[$2::bigint]) "+
		"ON CONFLICT (entity) DO UPDATE SET seqs = s.seqs || $2::bigint", msg.Metadata.Get(dedup.EntityIDKey), seq)
	return nil, err
}

func (b *orderingBundle) seqs(t *testing.T) map[string][]int64 {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), "SELECT entity, seqs FROM "+b.state)
	require.NoError(t, err)
	out := map[string][]int64{}
	for rows.Next() {
		var e string
		var s []int64
		require.NoError(t, rows.Scan(&e, &s))
		out[e] = s
	}
	require.NoError(t, rows.Err())
	return out
}

// orderingConsumer is one of the consumer processes sharing the store.
func (b *orderingBundle) orderingConsumer(t *testing.T, o middleware.OrderingConfig) (message.HandlerFunc, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	c, err := consumer.New(consumer.Config{
		Store:         b.store,
		Retry:         retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond},
		Ordering:      o,
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
		Logger:        slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c.Wrap("orders", b.handler), reader
}

func entityEvent(entity string, seq int64) *message.Message {
	msg := newMessage(fmt.Sprintf("%s-%d", entity, seq), "")
	msg.Metadata.Set(dedup.EntityIDKey, entity)
	msg.Metadata.Set(dedup.EntitySeqKey, strconv.FormatInt(seq, 10))
	return msg
}

// broker delivers msgs, shuffled, to handlers at once, several goroutines each, as a
// transport with consumer groups would: a nacked message goes to the back of the
// queue, and one delivery in ten of a fresh message is followed by a redelivery of it.
// It returns the count of each outcome.
func broker(t *testing.T, handlers []message.HandlerFunc, msgs []*message.Message) map[dedup.Outcome]int {
	t.Helper()
	rand.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
	type item struct {
		msg   *message.Message
		fresh bool
	}
	queue := make(chan item, 4*len(msgs))
	var pending atomic.Int64
	pending.Add(int64(len(msgs)))
	for _, m := range msgs {
		queue <- item{m, true}
	}
	done := make(chan struct{})
	var mu sync.Mutex
	outcomes := map[dedup.Outcome]int{}
	deadline := time.Now().Add(time.Minute)
	var wg sync.WaitGroup
	for _, h := range handlers {
		for range 4 {
			wg.Go(func() {
				for {
					var it item
					select {
					case it = <-queue:
					case <-done:
						return
					}
					if time.Now().After(deadline) {
						t.Error("deliveries did not end within a minute")
						pending.Store(0)
						close(done)
						return
					}
					if it.fresh && rand.IntN(10) == 0 {
						pending.Add(1)
						queue <- item{it.msg, false}
					}
					d := it.msg.Copy()
					_, err := h(d)
					o, _ := middleware.Outcome(d.Context())
					mu.Lock()
					outcomes[o]++
					mu.Unlock()
					if err != nil {
						queue <- item{it.msg, false}
						continue
					}
					if pending.Add(-1) == 0 {
						close(done)
					}
				}
			})
		}
	}
	wg.Wait()
	return outcomes
}

// staleCounted sums idem.messages with outcome stale over readers.
func staleCounted(t *testing.T, readers []*sdkmetric.ManualReader) int64 {
	t.Helper()
	var n int64
	for _, r := range readers {
		var rm metricdata.ResourceMetrics
		require.NoError(t, r.Collect(t.Context(), &rm))
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				sum, ok := m.Data.(metricdata.Sum[int64])
				if !ok || m.Name != "idem.messages" {
					continue
				}
				for _, dp := range sum.DataPoints {
					if v, _ := dp.Attributes.Value("outcome"); v.AsString() == "stale" {
						n += dp.Value
					}
				}
			}
		}
	}
	return n
}

// TestOrderingShuffled delivers 1,000 events of 50 entities, shuffled, with
// redeliveries, to three consumers sharing one store, each with four deliveries in
// flight. Under the strict gap policy every entity ends with its events applied once
// each, in sequence order; under apply, the applied events of each entity are in
// increasing order and end with its last, and every other delivery is stale or a
// duplicate, without running the handler.
func TestOrderingShuffled(t *testing.T) {
	t.Parallel()
	const entities, perEntity = 50, 20
	events := func() []*message.Message {
		var msgs []*message.Message
		for e := range entities {
			for seq := int64(1); seq <= perEntity; seq++ {
				msgs = append(msgs, entityEvent(fmt.Sprintf("ent%02d", e), seq))
			}
		}
		return msgs
	}

	t.Run("Strict", func(t *testing.T) {
		t.Parallel()
		b := setupOrdering(t)
		var hs []message.HandlerFunc
		for range 3 {
			h, _ := b.orderingConsumer(t, middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, GapTimeout: -1})
			hs = append(hs, h)
		}
		outcomes := broker(t, hs, events())
		want := make([]int64, perEntity)
		for i := range want {
			want[i] = int64(i + 1)
		}
		got := b.seqs(t)
		require.Len(t, got, entities)
		for e, s := range got {
			require.Equal(t, want, s, "entity %s: every event once, in order", e)
		}
		require.Equal(t, entities*perEntity, outcomes[dedup.Processed])
		require.Zero(t, outcomes[dedup.DeadLettered])
		require.Zero(t, b.deadLetters(t))
		require.Equal(t, int64(entities*perEntity), b.calls.Load(), "the handler runs only for events it applies")
		t.Logf("outcomes: %v", outcomes)
	})

	t.Run("Apply", func(t *testing.T) {
		t.Parallel()
		b := setupOrdering(t)
		var hs []message.HandlerFunc
		var readers []*sdkmetric.ManualReader
		for range 3 {
			h, r := b.orderingConsumer(t, middleware.OrderingConfig{Enabled: true})
			hs, readers = append(hs, h), append(readers, r)
		}
		outcomes := broker(t, hs, events())
		got := b.seqs(t)
		require.Len(t, got, entities)
		applied := 0
		for e, s := range got {
			require.IsIncreasing(t, s, "entity %s: no event applied after a later one", e)
			require.Equal(t, int64(perEntity), s[len(s)-1], "entity %s ends at its last event", e)
			applied += len(s)
		}
		require.Equal(t, applied, outcomes[dedup.Processed])
		require.Positive(t, outcomes[dedup.Stale], "shuffled deliveries leave stale events")
		require.Equal(t, int64(applied), b.calls.Load(), "the handler never runs for a stale event")
		require.Equal(t, int64(outcomes[dedup.Stale]), staleCounted(t, readers), "idem.messages counts stale deliveries")
		require.Zero(t, outcomes[dedup.DeadLettered])
		t.Logf("outcomes: %v", outcomes)
	})
}

// TestOrderingPoisonInTheMiddle: under the strict policy, a poison event in the middle
// of an entity is dead-lettered; the entity's later events wait for it until the gap
// timeout, then are dead-lettered with reason gap instead of blocking the partition,
// while another entity's events are all applied. Once the handler is fixed,
// replaying the dead letters in sequence order applies them once each, in order.
func TestOrderingPoisonInTheMiddle(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	b.poison.Store("A-3", true)
	// Long enough for B's own shuffled events to close their gaps on a loaded machine.
	h, _ := b.orderingConsumer(t, middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, GapTimeout: time.Second})
	var msgs []*message.Message
	for seq := int64(1); seq <= 5; seq++ {
		msgs = append(msgs, entityEvent("A", seq), entityEvent("B", seq))
	}
	broker(t, []message.HandlerFunc{h}, msgs)

	got := b.seqs(t)
	require.Equal(t, []int64{1, 2, 3, 4, 5}, got["B"], "the other entity is not held up")
	require.Equal(t, []int64{1, 2}, got["A"], "nothing of A is applied past the poison")
	require.Equal(t, string(dlq.ReasonPermanent), b.deadLetter(t, "orders", "A-3").Reason)
	for _, id := range []string{"A-4", "A-5"} {
		l := b.deadLetter(t, "orders", id)
		require.Equal(t, string(dlq.ReasonGap), l.Reason, id)
		require.Contains(t, l.Error, "waits for earlier events", id)
	}
	require.Equal(t, 3, b.deadLetters(t))

	b.poison.Delete("A-3")
	for _, seq := range []int64{3, 4, 5} {
		d := entityEvent("A", seq) // a replay: the same event ID again
		_, err := h(d)
		require.NoError(t, err)
		o, _ := middleware.Outcome(d.Context())
		require.Equal(t, dedup.Processed, o, "replay of A-%d", seq)
	}
	for _, seq := range []int64{3, 4, 5} {
		d := entityEvent("A", seq)
		_, err := h(d)
		require.NoError(t, err)
		o, _ := middleware.Outcome(d.Context())
		require.Equal(t, dedup.Duplicate, o, "a second replay of A-%d", seq)
	}
	require.Equal(t, []int64{1, 2, 3, 4, 5}, b.seqs(t)["A"], "applied once each, in order")
	m, err := b.store.Mark(t.Context(), "orders", "A")
	require.NoError(t, err)
	require.Equal(t, int64(5), m)
}

// TestOrderingMalformedEntity: an event whose entity ID or sequence number is
// unusable is dead-lettered as malformed on its first delivery, under its own event
// ID, and acked: it never loops, and the handler never runs.
func TestOrderingMalformedEntity(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	h, _ := b.orderingConsumer(t, middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict})
	cases := map[string]func(*message.Message){
		"seq-text":     func(m *message.Message) { m.Metadata.Set(dedup.EntitySeqKey, "abc") },
		"seq-zero":     func(m *message.Message) { m.Metadata.Set(dedup.EntitySeqKey, "0") },
		"seq-negative": func(m *message.Message) { m.Metadata.Set(dedup.EntitySeqKey, "-4") },
		"seq-spaces":   func(m *message.Message) { m.Metadata.Set(dedup.EntitySeqKey, " 4") },
		"seq-huge":     func(m *message.Message) { m.Metadata.Set(dedup.EntitySeqKey, "99999999999999999999") },
		"seq-missing":  func(m *message.Message) { delete(m.Metadata, dedup.EntitySeqKey) },
		"id-missing":   func(m *message.Message) { delete(m.Metadata, dedup.EntityIDKey) },
		"id-nul":       func(m *message.Message) { m.Metadata.Set(dedup.EntityIDKey, "a\x00b") },
		"id-blank":     func(m *message.Message) { m.Metadata.Set(dedup.EntityIDKey, "  ") },
	}
	for name, spoil := range cases {
		msg := entityEvent("A", 1)
		msg.Metadata.Set("event_id", name)
		spoil(msg)
		for range 2 {
			d := msg.Copy()
			_, err := h(d)
			require.NoError(t, err, "%s: acked, not handed back", name)
			o, _ := middleware.Outcome(d.Context())
			require.Equal(t, dedup.DeadLettered, o, name)
		}
		l := b.deadLetter(t, "orders", name)
		require.Equal(t, string(dlq.ReasonMalformed), l.Reason, name)
		require.Equal(t, 1, l.Attempts, name)
		require.Equal(t, 2, l.Count, "%s: one dead letter per event", name)
		require.Contains(t, l.Error, "dedup: invalid entity", name)
	}
	require.Zero(t, b.calls.Load(), "the handler never runs")
	require.Zero(t, b.attempts(t, "orders", "seq-text"), "no attempt is spent")
}

// TestOrderingConfig: ordering is refused with batching, and with a store that keeps
// no marks.
func TestOrderingConfig(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := consumer.New(consumer.Config{Store: b.store, Ordering: middleware.OrderingConfig{Enabled: true}, Batch: middleware.BatchConfig{MaxSize: 8}})
	require.ErrorContains(t, err, "consumer: Config.Ordering does not combine with Config.Batch")
	_, err = consumer.New(consumer.Config{Store: struct{ consumer.Store }{b.store}, Ordering: middleware.OrderingConfig{Enabled: true}})
	require.ErrorContains(t, err, "consumer: Config.Ordering needs a store that orders events (dedup.Sequencer)")
	_, err = consumer.New(consumer.Config{Store: b.store, Ordering: middleware.OrderingConfig{Gap: dedup.GapStrict}})
	require.ErrorContains(t, err, "consumer: Config.Ordering: ordering is configured but Enabled is false")
	_, err = consumer.New(consumer.Config{Store: b.store, Ordering: middleware.OrderingConfig{Enabled: true, GapTimeout: -2}})
	require.ErrorContains(t, err, "consumer: Config.Ordering: GapTimeout must be")
}

// TestOrderingApplyReplayOfAnOvertakenEventIsStale: under the apply policy, an event
// dead-lettered before a later event of its entity was applied is overtaken: its
// replay is stale, and the later state stays.
func TestOrderingApplyReplayOfAnOvertakenEventIsStale(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	b.poison.Store("A-1", true)
	h, _ := b.orderingConsumer(t, middleware.OrderingConfig{Enabled: true})
	for _, seq := range []int64{1, 2} {
		_, err := h(entityEvent("A", seq))
		require.NoError(t, err)
	}
	require.Equal(t, string(dlq.ReasonPermanent), b.deadLetter(t, "orders", "A-1").Reason)
	b.poison.Delete("A-1")
	d := entityEvent("A", 1)
	_, err := h(d)
	require.NoError(t, err)
	o, _ := middleware.Outcome(d.Context())
	require.Equal(t, dedup.Stale, o)
	require.Equal(t, []int64{2}, b.seqs(t)["A"])
}

// TestOrderingInTheSubscribersTransaction: with watermill-sql, the mark is locked and
// moved in the savepoint of the subscriber's transaction that holds the claim and the
// effects; a stale event is acked without running the handler.
func TestOrderingInTheSubscribersTransaction(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	br := newSQLBroker(t, b.pool)
	c, err := consumer.New(consumer.Config{
		Store:       b.store,
		Retry:       retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, MaxElapsedTime: 10 * time.Second},
		AckDeadline: 30 * time.Second,
		Ordering:    middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict},
		Logger:      testLogger(t),
	})
	require.NoError(t, err)
	var inSubscriberTx atomic.Int32
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "orders", br.topic, br.sub, func(msg *message.Message) error {
			tx, _ := postgres.TxFromContext(msg.Context())
			if wtx, ok := wsql.TxFromContext(msg.Context()); ok && wtx.(*wsql.PgxTx).Tx == tx {
				inSubscriberTx.Add(1)
			}
			_, err := b.handler(msg)
			return err
		})
	})
	again := entityEvent("A", 1)
	again.Metadata.Set("event_id", "A-1-again") // another event with an old sequence number
	br.publish(t, entityEvent("A", 1), entityEvent("A", 2), again, entityEvent("A", 3))
	require.Eventually(t, func() bool {
		m, err := b.store.Mark(t.Context(), "orders", "A")
		return err == nil && m == 3
	}, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, []int64{1, 2, 3}, b.seqs(t)["A"])
	require.Equal(t, int32(3), inSubscriberTx.Load(), "the stale event never reached the handler")
	require.Equal(t, int64(3), b.calls.Load())
}

// TestOrderingStaleRedeliveriesAreNoCrashLoop: a stale event leaves no processed row,
// so the crash guard's count of it is reset like a failure's: its redeliveries stay
// stale, never crash-looped.
func TestOrderingStaleRedeliveriesAreNoCrashLoop(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	c, err := consumer.New(consumer.Config{
		Store:      b.store,
		Retry:      fastPolicy(),
		CrashGuard: 1,
		Ordering:   middleware.OrderingConfig{Enabled: true},
		Logger:     testLogger(t),
	})
	require.NoError(t, err)
	h := c.Wrap("orders", b.handler)
	_, err = h(entityEvent("A", 2))
	require.NoError(t, err)
	for range 3 {
		d := entityEvent("A", 1)
		_, err := h(d)
		require.NoError(t, err)
		o, _ := middleware.Outcome(d.Context())
		require.Equal(t, dedup.Stale, o)
	}
	require.Zero(t, b.deadLetters(t))
}

// TestOrderingQuarantine: under the strict policy with quarantine, on watermill-sql
// (one message at a time, in order), a poison event in the middle of entity A is
// dead-lettered and A's later events are parked and acked, so B's events behind them
// are applied at once. Replaying the fixed event releases A's parked events, which
// the delayed retries publish again: each is applied once, in sequence order.
func TestOrderingQuarantine(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	b.poison.Store("A-3", true)
	br := newSQLBroker(t, b.pool)
	c, err := consumer.New(consumer.Config{
		Store:        b.store,
		Retry:        fastPolicy(),
		Ordering:     middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, Quarantine: true},
		DelayedRetry: consumer.DelayedRetryConfig{Publisher: br.pub, Interval: 10 * time.Millisecond},
		Logger:       testLogger(t),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunDelayedRetries(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "orders", br.topic, br.sub, func(msg *message.Message) error {
			_, err := b.handler(msg)
			return err
		})
	})
	var msgs []*message.Message
	for seq := int64(1); seq <= 5; seq++ {
		msgs = append(msgs, entityEvent("A", seq), entityEvent("B", seq))
	}
	br.publish(t, msgs...)
	require.Eventually(t, func() bool { return len(b.seqs(t)["B"]) == 5 }, 20*time.Second, 10*time.Millisecond,
		"B's events flow past A's poison")
	require.Equal(t, []int64{1, 2}, b.seqs(t)["A"])
	require.Equal(t, 1, b.deadLetters(t), "A's later events are parked, not dead-lettered")
	var id int64
	require.NoError(t, b.pool.QueryRow(ctx, "SELECT id FROM "+pgx.Identifier{b.store.Schema(), "dead_letters"}.Sanitize()+
		" WHERE event_id = 'A-3'").Scan(&id))
	require.Eventually(t, func() bool {
		rec, err := b.store.Get(ctx, id)
		return err == nil && rec.Parked == 2
	}, 10*time.Second, 10*time.Millisecond, "the dead letter shows its parked events")

	b.poison.Delete("A-3")
	entry, err := b.store.Replay(ctx, dlq.Change{IDs: []int64{id}, Selector: "ids=" + strconv.FormatInt(id, 10)}, func() error {
		return br.pub.Publish(br.topic, entityEvent("A", 3))
	})
	require.NoError(t, err)
	require.Equal(t, "ids="+strconv.FormatInt(id, 10)+" parked=release:2", entry.Selector)
	require.Eventually(t, func() bool { return len(b.seqs(t)["A"]) == 5 }, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, []int64{1, 2, 3, 4, 5}, b.seqs(t)["A"], "applied once each, in order")
	require.Equal(t, []int64{1, 2, 3, 4, 5}, b.seqs(t)["B"])
	rec, err := b.store.Get(ctx, id)
	require.NoError(t, err)
	require.Zero(t, rec.Parked)
	require.Equal(t, dlq.StatusReplayed, rec.Status)
}

// TestOrderingGapInTheSubscribersTransaction: on watermill-sql, which consumes a batch
// of messages in one transaction, an event that finds a gap right after an event of
// the same entity moved its mark in that transaction records the gap in it, instead
// of waiting for it: the gap ends in a dead letter after GapTimeout, and the
// partition moves on.
func TestOrderingGapInTheSubscribersTransaction(t *testing.T) {
	t.Parallel()
	b := setupOrdering(t)
	br := newSQLBroker(t, b.pool)
	c, err := consumer.New(consumer.Config{
		Store:    b.store,
		Retry:    fastPolicy(),
		Ordering: middleware.OrderingConfig{Enabled: true, Gap: dedup.GapStrict, GapTimeout: 200 * time.Millisecond},
		Logger:   testLogger(t),
	})
	require.NoError(t, err)
	runRouter(t, func(r *message.Router) {
		c.AddConsumerHandler(r, "orders", br.topic, br.sub, func(msg *message.Message) error {
			_, err := b.handler(msg)
			return err
		})
	})
	br.publish(t, entityEvent("A", 1), entityEvent("A", 3), entityEvent("A", 2))
	require.Eventually(t, func() bool { return len(b.seqs(t)["A"]) == 2 }, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, []int64{1, 2}, b.seqs(t)["A"])
	require.Equal(t, string(dlq.ReasonGap), b.deadLetter(t, "orders", "A-3").Reason)
}
