package postgres_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// The benchmarks compare the full idem stack with the idempotent handler people write
// by hand (Begin; claim insert; effect insert; Commit), on the same database, with the
// same writes, at handler concurrency 1 and 8. Each op is one message. Run:
//
//	go test -run '^$' -bench 'Handler' -benchtime 5000x ./postgres/
func benchSetup(b *testing.B, conns int32) (*postgres.Store, *pgxpool.Pool, string) {
	b.Helper()
	pool := testdb.PoolWith(b, func(c *pgxpool.Config) { c.MaxConns = conns })
	schema := testdb.Schema(b, pool)
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		b.Fatal(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	if _, err := pool.Exec(context.Background(), "CREATE TABLE "+effects+" (event_id text PRIMARY KEY, note text NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	return store, pool, effects
}

// runConcurrently calls fn(i) for i in [0, b.N) from n goroutines.
func runConcurrently(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	for range n {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if err := fn(int(i)); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkHandWrittenHandler(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			store, pool, effects := benchSetup(b, int32(conc))
			claim := "INSERT INTO " + pgx.Identifier{store.Schema(), "processed"}.Sanitize() + " (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
			effect := "INSERT INTO " + effects + " (event_id, note) VALUES ($1, $2)"
			ctx := context.Background()
			runConcurrently(b, conc, func(i int) error {
				id := "evt-" + strconv.Itoa(i)
				tx, err := pool.Begin(ctx)
				if err != nil {
					return err
				}
				defer tx.Rollback(ctx) //nolint:errcheck
				tag, err := tx.Exec(ctx, claim, "orders", id)
				if err != nil {
					return err
				}
				if tag.RowsAffected() == 0 {
					return nil
				}
				if _, err := tx.Exec(ctx, effect, id, "placed"); err != nil {
					return err
				}
				return tx.Commit(ctx)
			})
		})
	}
}

func BenchmarkIdemHandler(b *testing.B) { benchmarkIdem(b, consumer.Config{}) }

// BenchmarkIdemHandlerCrashGuard is BenchmarkIdemHandler with the crash guard on: the
// cost of counting each delivery before the handler runs.
func BenchmarkIdemHandlerCrashGuard(b *testing.B) { benchmarkIdem(b, consumer.Config{CrashGuard: 3}) }

// BenchmarkIdemHandlerNoPayloadHash is BenchmarkIdemHandler without the payload hash
// kept for conflicting duplicates: its cost.
func BenchmarkIdemHandlerNoPayloadHash(b *testing.B) {
	benchmarkIdem(b, consumer.Config{SkipPayloadHash: true})
}

func benchmarkIdem(b *testing.B, cfg consumer.Config) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			store, _, effects := benchSetup(b, int32(conc))
			cfg.Store, cfg.Logger = store, slog.New(slog.NewTextHandler(io.Discard, nil))
			c, err := consumer.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			effect := "INSERT INTO " + effects + " (event_id, note) VALUES ($1, $2)"
			h := c.WrapConsumer("orders", postgres.Handler(func(ctx context.Context, tx pgx.Tx, e struct{ Note string }) error {
				_, err := tx.Exec(ctx, effect, ctx.Value(eventIDKey{}), e.Note)
				return err
			}))
			runConcurrently(b, conc, func(i int) error {
				id := "evt-" + strconv.Itoa(i)
				msg := message.NewMessage(id, []byte(`{"Note":"placed"}`))
				msg.Metadata.Set("event_id", id)
				msg.SetContext(context.WithValue(context.Background(), eventIDKey{}, id))
				return h(msg)
			})
		})
	}
}

type eventIDKey struct{}
