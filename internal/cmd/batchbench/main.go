// Command batchbench measures group commit and batch handlers against one commit per
// message, side by side on one PostgreSQL database, with the same writes (a claim and
// one effect row per event): hand-written per-message, idem per-message, idem group
// commit and an idem batch handler, at several numbers of deliveries in flight. The
// modes run interleaved, round after round, so that a slow moment of a shared machine
// falls on all of them. It prints a markdown table: msgs/s, p50 and p99 delivery
// latency, WAL bytes per message, and the ratio to idem per-message.
//
//	go run ./internal/cmd/batchbench --database-url "$TEST_DATABASE_URL" --events 20000 --rounds 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "batchbench:", err)
		os.Exit(1)
	}
}

type config struct {
	url      string
	events   int
	rounds   int
	inFlight []int
	batch    int
	txs      int
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("batchbench", flag.ContinueOnError)
	var cfg config
	var inFlight string
	fs.StringVar(&cfg.url, "database-url", os.Getenv("TEST_DATABASE_URL"), "PostgreSQL `URL` (a schema of its own is created and dropped)")
	fs.IntVar(&cfg.events, "events", 20000, "events per mode, in flight count and round")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds; each runs every mode once, in a shuffled order")
	fs.StringVar(&inFlight, "in-flight", "16,32,64", "comma-separated numbers of deliveries in flight")
	fs.IntVar(&cfg.batch, "batch", 64, "Batch.MaxSize of the group commit and batch handler modes")
	fs.IntVar(&cfg.txs, "transactions", 0, "Batch.Transactions of those modes (0: the default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.url == "" {
		return errors.New("--database-url (or TEST_DATABASE_URL) is required")
	}
	for _, f := range strings.Split(inFlight, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1000 {
			return fmt.Errorf("--in-flight: %q is not a number from 1 to 1000", f)
		}
		cfg.inFlight = append(cfg.inFlight, n)
	}
	if cfg.events < 100 || cfg.rounds < 1 || cfg.batch < 1 || cfg.batch > middleware.MaxBatchSize {
		return errors.New("--events must be at least 100, --rounds at least 1, --batch from 1 to 10000")
	}

	pcfg, err := pgxpool.ParseConfig(cfg.url)
	if err != nil {
		return err
	}
	pcfg.MaxConns = int32(slices.Max(cfg.inFlight)) + 2
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	schema := fmt.Sprintf("idem_batchbench_%d", time.Now().UnixNano())
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}); err != nil {
		return err
	}
	defer func() {
		_, _ = pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	}()
	b, err := newBench(ctx, pool, schema, cfg.batch, cfg.txs)
	if err != nil {
		return err
	}
	modes := b.modes()
	results := map[string][]result{}
	for round := range cfg.rounds {
		for _, n := range cfg.inFlight {
			order := rand.Perm(len(modes))
			for _, i := range order {
				m := modes[i]
				h, err := m.build()
				if err != nil {
					return err
				}
				r, err := b.measure(ctx, h, n, cfg.events, fmt.Sprintf("r%d-%d-%d-", round, n, i))
				if err != nil {
					return fmt.Errorf("%s at %d in flight: %w", m.name, n, err)
				}
				key := m.name + "\x00" + strconv.Itoa(n)
				results[key] = append(results[key], r)
				fmt.Fprintf(os.Stderr, "round %d, %d in flight, %s: %.0f msgs/s\n", round+1, n, m.name, r.rate)
			}
		}
	}

	fmt.Fprintf(out, "| in flight | mode | msgs/s (median of %d) | p50 | p99 | WAL bytes/msg | vs idem per message |\n|---|---|---|---|---|---|---|\n", cfg.rounds)
	for _, n := range cfg.inFlight {
		base := median(results["idem per message\x00"+strconv.Itoa(n)])
		for _, m := range modes {
			r := median(results[m.name+"\x00"+strconv.Itoa(n)])
			fmt.Fprintf(out, "| %d | %s | %.0f | %s | %s | %.0f | %.2fx |\n", n, m.name, r.rate,
				r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.walPerMsg, r.rate/base.rate)
		}
	}
	return nil
}

type mode struct {
	name  string
	build func() (func(ctx context.Context, id string) error, error)
}

// newBench prepares the modes' store and effects table in schema, which must be
// migrated.
func newBench(ctx context.Context, pool *pgxpool.Pool, schema string, batch, txs int) (*bench, error) {
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE TABLE "+effects+" (event_id text PRIMARY KEY, note text NOT NULL)"); err != nil {
		return nil, err
	}
	return &bench{pool: pool, store: store, schema: schema, effects: effects, batch: batch, txs: txs}, nil
}

// modes are the four ways of handling the same events, compared side by side.
func (b *bench) modes() []mode {
	return []mode{
		{"hand-written per message", b.handWritten},
		{"idem per message", b.idem(false, false)},
		{"idem group commit", b.idem(true, false)},
		{"idem batch handler", b.idem(true, true)},
	}
}

type bench struct {
	pool    *pgxpool.Pool
	store   *postgres.Store
	schema  string
	effects string
	batch   int
	txs     int
}

// handWritten is the idempotent handler written by hand: begin, claim, effect, commit.
func (b *bench) handWritten() (func(context.Context, string) error, error) {
	claim := "INSERT INTO " + pgx.Identifier{b.schema, "processed"}.Sanitize() + " (consumer, event_id) VALUES ('hand', $1) ON CONFLICT DO NOTHING"
	effect := "INSERT INTO " + b.effects + " (event_id, note) VALUES ($1, 'placed')"
	return func(ctx context.Context, id string) error {
		return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, claim, id)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = tx.Exec(ctx, effect, id)
			return err
		})
	}, nil
}

type placed struct{ ID, Note string }

// idem is the full idem stack: per message, with group commit, or with group commit
// and a batch handler writing each batch with one multi-row INSERT.
func (b *bench) idem(grouped, bulk bool) func() (func(context.Context, string) error, error) {
	return func() (func(context.Context, string) error, error) {
		cfg := consumer.Config{Store: b.store, Logger: slog.New(slog.DiscardHandler)}
		if grouped {
			cfg.Batch = middleware.BatchConfig{MaxSize: b.batch, Transactions: b.txs}
		}
		c, err := consumer.New(cfg)
		if err != nil {
			return nil, err
		}
		var h message.NoPublishHandlerFunc
		if bulk {
			insert := "INSERT INTO " + b.effects + " (event_id, note) SELECT * FROM unnest($1::text[], $2::text[])"
			h = c.WrapConsumer("bulk", postgres.BatchHandler(func(ctx context.Context, tx pgx.Tx, events []placed) error {
				ids, notes := make([]string, len(events)), make([]string, len(events))
				for i, e := range events {
					ids[i], notes[i] = e.ID, e.Note
				}
				_, err := tx.Exec(ctx, insert, ids, notes)
				return err
			}))
		} else {
			insert := "INSERT INTO " + b.effects + " (event_id, note) VALUES ($1, $2)"
			name := map[bool]string{false: "single", true: "grouped"}[grouped]
			h = c.WrapConsumer(name, postgres.Handler(func(ctx context.Context, tx pgx.Tx, e placed) error {
				_, err := tx.Exec(ctx, insert, e.ID, e.Note)
				return err
			}))
		}
		return func(ctx context.Context, id string) error {
			msg := message.NewMessage(id, []byte(`{"ID":"`+id+`","Note":"placed"}`))
			msg.Metadata.Set("event_id", id)
			msg.SetContext(ctx)
			return h(msg)
		}, nil
	}
}

type result struct {
	rate      float64
	p50, p99  time.Duration
	walPerMsg float64
}

// measure delivers events messages from n goroutines and measures them.
func (b *bench) measure(ctx context.Context, h func(context.Context, string) error, n, events int, prefix string) (result, error) {
	var walStart, walEnd string
	if err := b.pool.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&walStart); err != nil {
		return result{}, err
	}
	lat := make([]time.Duration, events)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= events {
					return
				}
				t := time.Now()
				if err := h(ctx, prefix+strconv.Itoa(i)); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, ok := failed.Load().(error); ok {
		return result{}, err
	}
	var wal float64
	if err := b.pool.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&walEnd); err != nil {
		return result{}, err
	}
	if err := b.pool.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)", walEnd, walStart).Scan(&wal); err != nil {
		return result{}, err
	}
	slices.Sort(lat)
	return result{
		rate: float64(events) / elapsed.Seconds(),
		p50:  lat[events/2], p99: lat[events*99/100],
		walPerMsg: wal / float64(events),
	}, nil
}

func median(rs []result) result {
	slices.SortFunc(rs, func(a, b result) int {
		switch {
		case a.rate < b.rate:
			return -1
		case a.rate > b.rate:
			return 1
		}
		return 0
	})
	return rs[len(rs)/2]
}
