package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

// deliverAll delivers msgs at the same time, one goroutine each, as a transport with
// that many deliveries in flight would, redelivering each nacked one until it is acked
// or has been delivered max times. It returns the number of deliveries of each.
func deliverAll(t *testing.T, h message.NoPublishHandlerFunc, msgs []*message.Message, max int) []int {
	t.Helper()
	deliveries := make([]int, len(msgs))
	var wg sync.WaitGroup
	for i, msg := range msgs {
		wg.Go(func() {
			for deliveries[i] < max {
				deliveries[i]++
				if deliver(h, msg) == nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return deliveries
}

// batchSizes returns the largest batch recorded and the number of batches.
func batchSizes(t *testing.T, reader *sdkmetric.ManualReader) (largest int64, batches uint64) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(t.Context(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[int64]); ok && m.Name == "idem.batch.size" {
				for _, dp := range h.DataPoints {
					mx, _ := dp.Max.Value()
					largest, batches = max(largest, mx), batches+dp.Count
				}
			}
		}
	}
	return largest, batches
}

func (b *testBundle) batchConsumer(t *testing.T, cfg consumer.Config) (*consumer.Consumer, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	cfg.Store, cfg.Retry, cfg.Logger = b.store, fastPolicy(), testLogger(t)
	cfg.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	return c, reader
}

// TestBatchPoisonInTheMiddle: in a batch of sixteen events, a permanent poison and a
// transient one that never recovers are dead-lettered alone, each after its own
// attempts, while every neighbour's effect commits exactly once.
func TestBatchPoisonInTheMiddle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// MaxSize is the number of deliveries: the batch runs as soon as all joined it.
	c, reader := b.batchConsumer(t, consumer.Config{Batch: middleware.BatchConfig{MaxSize: 16, MaxWait: time.Second}})
	var calls sync.Map
	h := c.WrapConsumer("billing", func(msg *message.Message) error {
		id := msg.Metadata.Get("event_id")
		n, _ := calls.LoadOrStore(id, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if err := b.effect(msg.Context(), msg); err != nil {
			return err
		}
		switch id {
		case "evt-5":
			return retry.Permanent(errors.New("negative total"))
		case "evt-9":
			return errors.New("gateway down") // written, then rolled back, every attempt
		}
		return nil
	})
	msgs := make([]*message.Message, 16)
	for i := range msgs {
		msgs[i] = newMessage(fmt.Sprintf("evt-%d", i), "placed")
	}
	deliveries := deliverAll(t, h, msgs, 5)

	for i := range msgs {
		id := fmt.Sprintf("evt-%d", i)
		require.Equal(t, 1, deliveries[i], "%s is acked on its first delivery", id)
		switch id {
		case "evt-5", "evt-9":
			require.Zero(t, b.effectsOf(t, id), "the poison's writes roll back")
		default:
			require.Equal(t, 1, b.effectsOf(t, id), id)
		}
	}
	require.Equal(t, 2, b.deadLetters(t))
	require.Equal(t, dlq.ReasonPermanent, dlq.Reason(b.deadLetter(t, "billing", "evt-5").Reason))
	ex := b.deadLetter(t, "billing", "evt-9")
	require.Equal(t, dlq.ReasonExhausted, dlq.Reason(ex.Reason))
	require.Equal(t, 3, ex.Attempts, "the transient poison got its three attempts, each in a batch")
	n, _ := calls.Load("evt-9")
	require.Equal(t, int32(3), n.(*atomic.Int32).Load())
	n, _ = calls.Load("evt-0")
	require.Equal(t, int32(1), n.(*atomic.Int32).Load(), "a neighbour runs once")

	largest, batches := batchSizes(t, reader)
	require.Equal(t, int64(16), largest, "the sixteen deliveries shared one transaction")
	require.GreaterOrEqual(t, batches, uint64(3), "the first batch, then evt-9's retries")
}

// TestBatchDuplicates: a duplicate inside one batch and one across batches are
// skipped, each event's effect applied once.
func TestBatchDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, reader := b.batchConsumer(t, consumer.Config{Batch: middleware.BatchConfig{MaxSize: 4, MaxWait: time.Second}})
	var runs atomic.Int32
	h := c.WrapConsumer("billing", func(msg *message.Message) error {
		runs.Add(1)
		return b.effect(msg.Context(), msg)
	})
	first := []*message.Message{newMessage("evt-1", "a"), newMessage("evt-2", "b"), newMessage("evt-1", "a"), newMessage("evt-3", "c")}
	require.Equal(t, []int{1, 1, 1, 1}, deliverAll(t, h, first, 3))
	largest, _ := batchSizes(t, reader)
	require.Equal(t, int64(4), largest, "one batch")
	second := []*message.Message{newMessage("evt-2", "b"), newMessage("evt-3", "c"), newMessage("evt-4", "d")}
	require.Equal(t, []int{1, 1, 1}, deliverAll(t, h, second, 3))
	for _, id := range []string{"evt-1", "evt-2", "evt-3", "evt-4"} {
		require.Equal(t, 1, b.effectsOf(t, id), id)
	}
	require.Equal(t, int32(4), runs.Load(), "duplicates never reach the handler")
}

// TestBatchCommitFailureNeverDeadLetters: when the batch's connection dies before its
// COMMIT (its backend terminated), every delivery of the batch is handed back as not
// its fault, no attempt spent, nothing dead-lettered; the redeliveries apply each
// effect once.
func TestBatchCommitFailureNeverDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.batchConsumer(t, consumer.Config{Batch: middleware.BatchConfig{MaxSize: 6, MaxWait: time.Second}})
	var killed atomic.Bool
	h := c.WrapConsumer("billing", func(msg *message.Message) error {
		if err := b.effect(msg.Context(), msg); err != nil {
			return err
		}
		if msg.Metadata.Get("event_id") == "evt-5" && killed.CompareAndSwap(false, true) {
			tx, _ := postgres.TxFromContext(msg.Context())
			var pid int
			if err := tx.QueryRow(msg.Context(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				return err
			}
			if _, err := b.pool.Exec(context.Background(), "SELECT pg_terminate_backend($1)", pid); err != nil {
				return err
			}
		}
		return nil
	})
	msgs := make([]*message.Message, 6)
	for i := range msgs {
		msgs[i] = newMessage(fmt.Sprintf("evt-%d", i), "placed")
	}
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, msg := range msgs {
		wg.Go(func() { errs[i] = deliver(h, msg) })
	}
	wg.Wait()
	require.True(t, killed.Load())
	for i, err := range errs {
		require.Error(t, err, "evt-%d is handed back: its batch did not commit", i)
		require.Equal(t, retry.ClassInfrastructure, postgres.Classify(err), "evt-%d: %v", i, err)
	}
	require.Zero(t, b.deadLetters(t))
	for i := range msgs {
		id := fmt.Sprintf("evt-%d", i)
		require.Zero(t, b.effectsOf(t, id), id)
		require.Zero(t, b.attempts(t, "billing", id), "%s: an outage spends no attempt", id)
	}

	require.Equal(t, []int{1, 1, 1, 1, 1, 1}, deliverAll(t, h, msgs, 3))
	for i := range msgs {
		require.Equal(t, 1, b.effectsOf(t, fmt.Sprintf("evt-%d", i)))
	}
}

// TestBatchHandlerWritesABatchInOneCall: a batch handler gets the claimed events of a
// batch at once; when its bulk write fails on a poison event, the events are written
// one by one, and only the poison is dead-lettered.
func TestBatchHandlerWritesABatchInOneCall(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.batchConsumer(t, consumer.Config{Batch: middleware.BatchConfig{MaxSize: 11, MaxWait: time.Second}})
	type order struct{ ID, Note string }
	var calls []int
	var mu sync.Mutex
	h := c.WrapConsumer("billing", postgres.BatchHandler(func(ctx context.Context, tx pgx.Tx, orders []order) error {
		mu.Lock()
		calls = append(calls, len(orders))
		mu.Unlock()
		rows := make([][]any, len(orders))
		for i, o := range orders {
			if o.Note == "" {
				return retry.Permanent(fmt.Errorf("order %s has no note", o.ID))
			}
			rows[i] = []any{o.ID, o.Note}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{b.store.Schema(), "effects"}, []string{"event_id", "note"}, pgx.CopyFromRows(rows))
		return err
	}))
	msgs := make([]*message.Message, 10)
	for i := range msgs {
		note := "placed"
		if i == 6 {
			note = ""
		}
		msgs[i] = newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"ID": "evt-%d", "Note": %q}`, i, note))
	}
	msgs = append(msgs, newMessage("evt-2", `{"ID": "evt-2", "Note": "placed"}`)) // a duplicate in the batch
	require.Equal(t, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, deliverAll(t, h, msgs, 3))
	for i := range 10 {
		want := 1
		if i == 6 {
			want = 0
		}
		require.Equal(t, want, b.effectsOf(t, fmt.Sprintf("evt-%d", i)), "evt-%d", i)
	}
	require.Equal(t, 1, b.deadLetters(t))
	require.Equal(t, dlq.ReasonPermanent, dlq.Reason(b.deadLetter(t, "billing", "evt-6").Reason))
	require.Equal(t, 10, calls[0], "one call for the ten claimed events, the duplicate left out")
	require.Len(t, calls, 11, "then one call per event to isolate the poison")
}

// TestBatchHandlerSwallowingAnSQLError: a handler that swallows an SQL error inside a
// batch fails alone (its savepoint was aborted) instead of failing the batch's COMMIT.
func TestBatchHandlerSwallowingAnSQLError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.batchConsumer(t, consumer.Config{Batch: middleware.BatchConfig{MaxSize: 4, MaxWait: 200 * time.Millisecond}})
	h := c.WrapConsumer("billing", func(msg *message.Message) error {
		if err := b.effect(msg.Context(), msg); err != nil {
			return err
		}
		if msg.Metadata.Get("event_id") == "evt-2" {
			tx, _ := postgres.TxFromContext(msg.Context())
			_, _ = tx.Exec(msg.Context(), "SELECT 1/0") // the error is swallowed
		}
		return nil
	})
	msgs := []*message.Message{newMessage("evt-1", "a"), newMessage("evt-2", "b"), newMessage("evt-3", "c")}
	deliverAll(t, h, msgs, 5)
	require.Equal(t, 1, b.effectsOf(t, "evt-1"))
	require.Equal(t, 1, b.effectsOf(t, "evt-3"))
	require.Zero(t, b.effectsOf(t, "evt-2"))
	require.Equal(t, dlq.ReasonExhausted, dlq.Reason(b.deadLetter(t, "billing", "evt-2").Reason))
	require.Contains(t, b.deadLetter(t, "billing", "evt-2").Error, "returned nil after an SQL error")
}

// The SIGKILL test runs this test binary again as a consumer process (batchChild)
// that consumes ten events in one batch; in "kill" mode the handler of evt-5 hangs,
// after the first five effects were written in the batch's transaction, and the parent
// kills the process.
const batchChildEnv = "IDEM_TEST_BATCH_CHILD"

func batchChild() int {
	ctx := context.Background()
	schema, mode, _ := strings.Cut(os.Getenv(batchChildEnv), ":")
	pool, err := pgxpool.New(ctx, os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	c, err := consumer.New(consumer.Config{Store: store, Logger: discardLogger(),
		Batch: middleware.BatchConfig{MaxSize: 10, MaxWait: time.Second}})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	h := c.WrapConsumer("orders", func(msg *message.Message) error {
		id := msg.Metadata.Get("event_id")
		tx, _ := postgres.TxFromContext(msg.Context())
		if _, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (event_id, note) VALUES ($1, 'x')", id); err != nil {
			return err
		}
		if id == "evt-5" && mode == "kill" {
			fmt.Println("in batch")
			select {} // hang until killed
		}
		return nil
	})
	var wg sync.WaitGroup
	var nacked atomic.Int32
	for i := range 10 {
		wg.Go(func() {
			if h(newMessage(fmt.Sprintf("evt-%d", i), "x")) != nil {
				nacked.Add(1)
			}
		})
	}
	wg.Wait()
	fmt.Printf("acked %d\n", 10-nacked.Load())
	return 0
}

// TestBatchSurvivesSIGKILL: a consumer process killed in the middle of a batch leaves
// none of the batch's effects; its restart applies each event once.
func TestBatchSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := func(mode string) (killed bool, out string) {
		t.Helper()
		return runChild(t, batchChildEnv+"="+b.store.Schema()+":"+mode, "in batch")
	}
	killed, out := run("kill")
	require.True(t, killed, out)
	require.Zero(t, b.count(t, "SELECT count(*) FROM "+b.effects), "nothing of the killed batch committed")
	killed, out = run("finish")
	require.False(t, killed)
	require.Equal(t, "acked 10", out)
	for i := range 10 {
		require.Equal(t, 1, b.effectsOf(t, fmt.Sprintf("evt-%d", i)), "evt-%d", i)
	}
	killed, out = run("finish")
	require.False(t, killed)
	require.Equal(t, "acked 10", out, "every redelivery is a duplicate")
	require.Equal(t, 10, b.count(t, "SELECT count(*) FROM "+b.effects))
}

// TestBatchWithCrashGuard: the crash guard counts each event of a batch on its own:
// in one batch, the event whose earlier deliveries all died is dead-lettered as
// crash-looped without running, one with fewer such deliveries runs, and so do the
// others.
func TestBatchWithCrashGuard(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := b.batchConsumer(t, consumer.Config{CrashGuard: 3, Batch: middleware.BatchConfig{MaxSize: 4, MaxWait: time.Second}})
	var runs sync.Map
	h := c.WrapConsumer("billing", func(msg *message.Message) error {
		runs.Store(msg.Metadata.Get("event_id"), true)
		return b.effect(msg.Context(), msg)
	})
	// Deliveries that started and never finished, as processes killed mid-batch
	// leave them: three processes died running evt-crash, two evt-twice.
	for id, n := range map[string]int{"evt-crash": 3, "evt-twice": 2} {
		for range n {
			b.crashedStart(t, "billing", id)
		}
	}
	msgs := []*message.Message{newMessage("evt-1", "a"), newMessage("evt-crash", "b"), newMessage("evt-twice", "c"), newMessage("evt-2", "d")}
	require.Equal(t, []int{1, 1, 1, 1}, deliverAll(t, h, msgs, 2))

	_, ran := runs.Load("evt-crash")
	require.False(t, ran, "the crash-looping event is not run again")
	require.Zero(t, b.effectsOf(t, "evt-crash"))
	require.Equal(t, dlq.ReasonCrashLooped, dlq.Reason(b.deadLetter(t, "billing", "evt-crash").Reason))
	for _, id := range []string{"evt-1", "evt-twice", "evt-2"} {
		require.Equal(t, 1, b.effectsOf(t, id), id)
	}
	require.Equal(t, 1, b.deadLetters(t))
}

// plainStore hides every optional interface of the store it wraps.
type plainStore struct{ store *postgres.Store }

func (p plainStore) Run(ctx context.Context, key dedup.Key, fn func(context.Context) error) (bool, error) {
	return p.store.Run(ctx, key, fn)
}

func (p plainStore) RecordFailure(ctx context.Context, key dedup.Key, cause string) (int, error) {
	return p.store.RecordFailure(ctx, key, cause)
}

func (p plainStore) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	return p.store.Put(ctx, d)
}

func TestBatchConfigIsValidated(t *testing.T) {
	t.Parallel()
	store, _ := testdb.Store(t)
	for _, tt := range []struct {
		cfg  consumer.Config
		want string
	}{
		{consumer.Config{Store: store, Batch: middleware.BatchConfig{MaxSize: -1}}, "consumer: Config.Batch: MaxSize must be from 0 (off) to 10000, got -1"},
		{consumer.Config{Store: store, Batch: middleware.BatchConfig{MaxSize: 10001}}, "MaxSize must be from 0 (off) to 10000"},
		{consumer.Config{Store: store, Batch: middleware.BatchConfig{MaxSize: 8, MaxWait: -time.Second}}, "MaxWait must not be negative"},
		{consumer.Config{Store: store, Batch: middleware.BatchConfig{MaxWait: time.Second}}, "MaxWait 1s is set but MaxSize is 0"},
		{consumer.Config{Store: store, Batch: middleware.BatchConfig{MaxSize: 8, Transactions: -1}}, "Transactions must be from 0 (the default, 4) to 1000, got -1"},
		{consumer.Config{Store: plainStore{store}, Batch: middleware.BatchConfig{MaxSize: 8}}, "Config.Batch needs a store that runs batches (dedup.BatchRunner)"},
	} {
		_, err := consumer.New(tt.cfg)
		require.ErrorContains(t, err, tt.want)
	}
}
