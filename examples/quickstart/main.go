// Quickstart is the first idem program to run. It shows, in a few seconds and with
// nothing to install, what idem does for a Watermill consumer under at-least-once
// delivery:
//
//	go run ./examples/quickstart
//
// A "billing" handler consumes the "orders" topic through a real Watermill router and
// records each order in an orders table, through the transaction idem gives it. The
// stream it receives is an at-least-once broker on a bad day: some orders arrive two
// or three times, the payment gateway fails one order twice before it accepts it, and
// four messages are poison (a payload that is not JSON, a negative total, an order the
// gateway always refuses, a message without an event_id). The program waits until
// every message has been acknowledged, then prints what happened: each order written
// once, duplicates skipped, transient failures retried, poison dead-lettered and kept
// for review.
//
// With no configuration it uses Watermill's in-process gochannel and idem's embedded
// SQLite store in a local file, idem-quickstart.db (flag -db), removed and recreated
// on every run. With IDEM_DATABASE_URL=postgres://… (or -database-url) it uses
// PostgreSQL instead, with idem's tables in the schema idem_quickstart (flag -schema),
// migrated if needed and emptied at the start of every run.
//
// idem's log goes to idem-quickstart.log next to the database file (flag -log); -v
// prints it on standard error as well.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		stop()
		os.Exit(1)
	}
}

// OrderPlaced is the event on the orders topic, as JSON.
type OrderPlaced struct {
	ID         string
	Customer   string
	TotalCents int64
}

// The scenario: what is published, and what goes wrong.
const (
	topic        = "orders"
	consumerName = "billing" // the dedup scope: stable across deploys, one per handler

	firstOrder  = 1001 // orders are ord-1001, ord-1002, …; their events evt-1001, evt-1002, …
	validOrders = 14   // orders the handler accepts, ord-1001 to ord-1014: each must be billed once

	flakyOrder    = 1007 // the payment gateway fails it flakyFailures times, then accepts it
	flakyFailures = 2    // fewer than maxAttempts, so the order goes through

	// The poison messages, one of each kind, published after the valid orders.
	notJSONOrder   = 1015 // a legacy producer sends XML: permanent (decode error), not retried
	negativeOrder  = 1016 // a negative total: the handler says retry.Permanent
	downOrder      = 1017 // the gateway refuses it on every attempt: dead-lettered when exhausted
	noEventIDOrder = 1018 // published without an event_id: malformed, dead-lettered at once
	poisonMessages = 4

	maxAttempts = 3 // per event, counted durably across retries and redeliveries
)

// redelivered says how many extra copies of an order are published, as a producer
// that retries a publish or a broker that redelivers would send them. Each copy is a
// new message (a new Watermill UUID) carrying the same event_id.
var redelivered = map[int]int{1002: 2, 1009: 1}

// retryPolicy keeps the demo fast; the defaults are 5 attempts, 100ms to 10s.
var retryPolicy = retry.Policy{MaxAttempts: maxAttempts, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond}

// ackTimeout bounds the wait for every published message to be acknowledged.
const ackTimeout = 20 * time.Second

// The log messages of idem that the summary counts.
const (
	logDuplicate = "idem: duplicate skipped"
	logRetrying  = "idem: attempt failed, retrying"
)

func orderID(n int) string { return fmt.Sprintf("ord-%d", n) }
func eventID(n int) string { return fmt.Sprintf("evt-%d", n) }

// delivery is one message to publish.
type delivery struct {
	eventID string // "" publishes the message without an event_id
	payload []byte
}

func order(n int) OrderPlaced {
	customers := []string{"ada", "grace", "linus", "barbara", "ken"}
	return OrderPlaced{ID: orderID(n), Customer: customers[n%len(customers)], TotalCents: int64(1250 + 375*(n%7))}
}

// scenario returns the messages to publish, in order.
func scenario() []delivery {
	var ds []delivery
	add := func(eventID string, o OrderPlaced) {
		payload, err := json.Marshal(o)
		if err != nil {
			panic(err) // OrderPlaced always encodes
		}
		ds = append(ds, delivery{eventID: eventID, payload: payload})
	}
	for n := firstOrder; n < firstOrder+validOrders; n++ {
		add(eventID(n), order(n))
	}
	for n := firstOrder; n < firstOrder+validOrders; n++ {
		for range redelivered[n] {
			add(eventID(n), order(n))
		}
	}
	ds = append(ds, delivery{eventID(notJSONOrder), fmt.Appendf(nil, `<order id="%s" customer="ken" total="12.50"/>`, orderID(notJSONOrder))})
	negative := order(negativeOrder)
	negative.TotalCents = -500
	add(eventID(negativeOrder), negative)
	add(eventID(downOrder), order(downOrder))
	add("", order(noEventIDOrder))
	return ds
}

// errGatewayUnavailable is the payment gateway's transient failure. An error without
// a marker is transient: idem retries it, with backoff, up to maxAttempts.
var errGatewayUnavailable = errors.New("payment gateway unavailable (503)")

// gateway stands in for a payment gateway, in memory. It fails the orders in fails
// as many times as it says (-1: always), and charges each idempotency key once.
type gateway struct {
	mu      sync.Mutex
	fails   map[string]int  // order ID -> failures left
	charged map[string]bool // idempotency keys charged
}

// Charge charges the order. idem applies the handler's database writes once; a call
// to another service is not covered by that, so it must be idempotent itself: the
// event ID goes along as the idempotency key, as real gateways accept, and a second
// charge with the same key is not charged again.
func (g *gateway) Charge(_ context.Context, idempotencyKey string, o OrderPlaced) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch left := g.fails[o.ID]; {
	case left < 0:
		return fmt.Errorf("charge order %s: %w", o.ID, errGatewayUnavailable)
	case left > 0:
		g.fails[o.ID] = left - 1
		return fmt.Errorf("charge order %s: %w", o.ID, errGatewayUnavailable)
	}
	g.charged[idempotencyKey] = true
	return nil
}

// bill is the part of the billing handler that is the same on both stores: validate
// the order, then charge it.
func (g *gateway) bill(ctx context.Context, eventID string, o OrderPlaced) error {
	if o.TotalCents < 0 {
		// No retry can fix this: dead-letter it now.
		return retry.Permanent(fmt.Errorf("order %s: total %d cents is negative", o.ID, o.TotalCents))
	}
	return g.Charge(ctx, eventID, o)
}

// eventIDOf returns the event ID of the message being handled: a typed handler gets
// the decoded event, not the message, and idem keeps the event's key in the context.
func eventIDOf(ctx context.Context) string {
	key, _ := middleware.EventKey(ctx)
	return key.EventID
}

type options struct {
	dbPath      string
	databaseURL string
	urlFromEnv  bool
	schema      string
	logPath     string
	verbose     bool
}

// run runs the quickstart with the command-line arguments args, and writes its report
// to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	opts, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}

	logFile, err := os.Create(opts.logPath)
	if err != nil {
		return fmt.Errorf("create the log file (flag -log): %w", err)
	}
	defer logFile.Close()
	// idem's log, duplicates (debug) included; Watermill's from info up.
	sink := func(level slog.Level) slog.Handler {
		h := slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: level})
		if !opts.verbose {
			return h
		}
		return slog.NewMultiHandler(h, slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	counter := &logCounter{next: sink(slog.LevelDebug), counts: &logCounts{}}

	g := &gateway{
		fails:   map[string]int{orderID(flakyOrder): flakyFailures, orderID(downOrder): -1},
		charged: map[string]bool{},
	}
	var b *backend
	if opts.databaseURL != "" {
		b, err = openPostgres(ctx, opts, g)
	} else {
		b, err = openSQLite(ctx, opts, g)
	}
	if err != nil {
		return err
	}
	defer b.close()

	p := newPrinter(stdout)
	p.line("idem quickstart: at-least-once in, effects once")
	p.line("  store:   %s", b.describe)
	p.line("  broker:  Watermill gochannel (in-process), topic %q, consumer %q", topic, consumerName)
	p.line("  log:     %s (idem's log; -v prints it here too)", opts.logPath)
	p.line("")

	c, err := consumer.New(consumer.Config{
		Store:  b.store,
		Retry:  retryPolicy,
		Logger: slog.New(counter),
	})
	if err != nil {
		return err
	}

	deliveries := scenario()
	start := time.Now()
	acked, err := consume(ctx, c, b.handler, deliveries, slog.New(sink(slog.LevelInfo)))
	if err != nil {
		return err
	}
	took := time.Since(start)

	orders, claims, deadLettered, err := b.counts(ctx)
	if err != nil {
		return err
	}
	duplicates, retried := counter.counts.duplicates.Load(), counter.counts.retries.Load()
	// Every acked delivery ended in exactly one outcome; the orders table holds one row
	// per processed event, and nothing else wrote to it.
	if orders != claims {
		return fmt.Errorf("effects-once check failed: %d rows in orders but %d events processed", orders, claims)
	}
	if acked != orders+duplicates+deadLettered {
		return fmt.Errorf("outcome check failed: %d messages acked, but %d processed + %d duplicates + %d dead-lettered",
			acked, orders, duplicates, deadLettered)
	}

	copies := 0
	for _, n := range redelivered {
		copies += n
	}
	p.line("summary (all %d messages acked in %s):", len(deliveries), took.Round(time.Millisecond))
	p.line("  published:          %3d  %d orders, %d extra copies of them, %d poison messages", len(deliveries), validOrders, copies, poisonMessages)
	p.line("  processed:          %3d  rows in orders: one per order, though %d messages carried them", orders, validOrders+copies)
	p.line("  duplicates skipped: %3d  acked without running the handler again", duplicates)
	p.line("  retried attempts:   %3d  transient failures (the payment gateway) tried again, with backoff", retried)
	p.line("  dead-lettered:      %3d  stored with reason, attempts and error, then acked", deadLettered)
	p.line("")

	letters, err := b.deadLetters(ctx)
	if err != nil {
		return err
	}
	p.deadLetters(letters)
	p.line("")
	p.line("next:")
	for _, l := range b.next {
		p.line("  %s", l)
	}
	return p.err
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("quickstart", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	envURL := os.Getenv("IDEM_DATABASE_URL")
	fs.StringVar(&opts.dbPath, "db", "idem-quickstart.db", "the SQLite database `FILE`; removed first: every run starts clean")
	fs.StringVar(&opts.databaseURL, "database-url", envURL, "use PostgreSQL at `URL` instead of SQLite; defaults to $IDEM_DATABASE_URL")
	fs.StringVar(&opts.schema, "schema", "idem_quickstart", "the PostgreSQL `SCHEMA` of idem's tables and of the orders table; emptied first")
	fs.StringVar(&opts.logPath, "log", "", "write idem's log to `FILE`; defaults to idem-quickstart.log next to the database file")
	fs.BoolVar(&opts.verbose, "v", false, "print idem's log on standard error too")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: go run ./examples/quickstart [flags]")
			fs.PrintDefaults()
			return opts, err
		}
		return opts, fmt.Errorf("%w (see -h)", err)
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	opts.urlFromEnv = opts.databaseURL != "" && opts.databaseURL == envURL
	opts.logPath = cmp.Or(opts.logPath, filepath.Join(filepath.Dir(opts.dbPath), "idem-quickstart.log"))
	return opts, nil
}

// consume runs a Watermill router with the billing handler registered through c,
// publishes deliveries, waits until every one of them was acked, and closes the
// router. It returns how many messages were acked.
func consume(ctx context.Context, c *consumer.Consumer, h message.NoPublishHandlerFunc, deliveries []delivery, logger *slog.Logger) (int64, error) {
	wlog := watermill.NewSlogLogger(logger)
	pubSub := gochannel.NewGoChannel(gochannel.Config{}, wlog)
	defer pubSub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return 0, err
	}

	// The router acks a message when its handler returns nil; this router-level
	// middleware wraps idem's whole stack, so it sees each delivery's final result.
	var acked atomic.Int64
	ackCh := make(chan struct{}, 1)
	router.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			produced, err := h(msg)
			if err == nil {
				acked.Add(1)
				select {
				case ackCh <- struct{}{}:
				default:
				}
			}
			return produced, err
		}
	})
	c.AddConsumerHandler(router, consumerName, topic, pubSub, h)

	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	closeRouter := func() error {
		if err := router.Close(); err != nil {
			return fmt.Errorf("close the router: %w", err)
		}
		if err := <-runErr; err != nil {
			return fmt.Errorf("router: %w", err)
		}
		return nil
	}
	select {
	case <-router.Running():
	case err := <-runErr:
		return 0, fmt.Errorf("router: %w", err)
	}

	for _, d := range deliveries {
		msg := message.NewMessage(watermill.NewUUID(), d.payload)
		if d.eventID != "" {
			msg.Metadata.Set("event_id", d.eventID) // where idem reads the event ID (dedup.MetadataKey)
		}
		if err := pubSub.Publish(topic, msg); err != nil {
			return 0, errors.Join(fmt.Errorf("publish: %w", err), closeRouter())
		}
	}

	timeout := time.NewTimer(ackTimeout)
	defer timeout.Stop()
	for acked.Load() < int64(len(deliveries)) {
		select {
		case <-ackCh:
		case <-timeout.C:
			n := acked.Load()
			return n, errors.Join(fmt.Errorf("only %d of %d messages were acked within %s; rerun with -v to see idem's log", n, len(deliveries), ackTimeout), closeRouter())
		case <-ctx.Done():
			return acked.Load(), errors.Join(ctx.Err(), closeRouter())
		}
	}
	return acked.Load(), closeRouter()
}

// backend is what differs between the two stores: the store, the handler's writes,
// and how the report reads them back.
type backend struct {
	describe string
	store    consumer.Store
	handler  message.NoPublishHandlerFunc
	// counts returns the rows in orders, the events processed (idem's claims), and the
	// pending dead letters.
	counts      func(ctx context.Context) (orders, processed, deadLettered int64, err error)
	deadLetters func(ctx context.Context) ([]deadLetter, error)
	next        []string
	close       func()
}

// deadLetter is one row of the dead-letter report.
type deadLetter struct {
	reason, consumer, eventID string
	attempts                  int
	err                       string
}

func openSQLite(ctx context.Context, opts options, g *gateway) (*backend, error) {
	removed := false
	for _, f := range []string{opts.dbPath, opts.dbPath + "-wal", opts.dbPath + "-shm"} {
		err := os.Remove(f)
		if err == nil {
			removed = true
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	store, err := sqlite.Open(ctx, opts.dbPath, sqlite.Config{Migrate: true})
	if err != nil {
		return nil, err
	}
	db := store.DB()
	// No UNIQUE on order_id, on purpose: the row count shows that idem, not a
	// constraint, kept each order to one row.
	const ddl = `CREATE TABLE orders (
    order_id    TEXT    NOT NULL,
    customer    TEXT    NOT NULL,
    total_cents INTEGER NOT NULL,
    billed_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT`
	if _, err := db.ExecContext(ctx, ddl); err != nil {
		store.Close()
		return nil, fmt.Errorf("create the orders table: %w", err)
	}
	fresh := "a new file"
	if removed {
		fresh = "the previous run's file was removed: every run starts clean"
	}
	return &backend{
		describe: fmt.Sprintf("SQLite %s (%s)", opts.dbPath, fresh),
		store:    store,
		handler: sqlite.Handler(func(ctx context.Context, tx *sql.Tx, o OrderPlaced) error {
			if err := g.bill(ctx, eventIDOf(ctx), o); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO orders (order_id, customer, total_cents) VALUES (?1, ?2, ?3)",
				o.ID, o.Customer, o.TotalCents)
			return err
		}),
		counts: func(ctx context.Context) (int64, int64, int64, error) {
			var orders int64
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&orders); err != nil {
				return 0, 0, 0, fmt.Errorf("count orders: %w", err)
			}
			st, err := store.Stats(ctx)
			return orders, st.Processed, st.PendingDeadLetters, err
		},
		deadLetters: func(ctx context.Context) ([]deadLetter, error) {
			rows, err := db.QueryContext(ctx, "SELECT reason, consumer, event_id, attempts, error FROM dead_letters ORDER BY reason, event_id")
			if err != nil {
				return nil, fmt.Errorf("read dead letters: %w", err)
			}
			defer rows.Close()
			var out []deadLetter
			for rows.Next() {
				var d deadLetter
				if err := rows.Scan(&d.reason, &d.consumer, &d.eventID, &d.attempts, &d.err); err != nil {
					return nil, fmt.Errorf("read dead letters: %w", err)
				}
				out = append(out, d)
			}
			return out, rows.Err()
		},
		next: []string{
			fmt.Sprintf("review the dead letters, kept in %s:", opts.dbPath),
			fmt.Sprintf("  go run ./cmd/idem dlq report --database-url sqlite:%s", opts.dbPath),
			fmt.Sprintf("see every attempt, retry and dead letter in %s, or rerun with -v", opts.logPath),
			"run it on PostgreSQL: IDEM_DATABASE_URL=postgres://… go run ./examples/quickstart",
		},
		close: func() { store.Close() },
	}, nil
}

func openPostgres(ctx context.Context, opts options, g *gateway) (*backend, error) {
	cfg, err := pgxpool.ParseConfig(opts.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("the PostgreSQL URL does not parse: %w", err)
	}
	where := fmt.Sprintf("%s@%s:%d/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL %s: %w", where, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach PostgreSQL %s: %w", where, err)
	}
	b, err := setupPostgres(ctx, pool, opts, g, where)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return b, nil
}

func setupPostgres(ctx context.Context, pool *pgxpool.Pool, opts options, g *gateway, where string) (*backend, error) {
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: opts.schema}); err != nil {
		return nil, err
	}
	store, err := postgres.New(pool, postgres.Config{Schema: opts.schema})
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{opts.schema}.Sanitize() // Migrate validated the name
	// The application's own table lives beside idem's, in the same database: that is
	// what lets one transaction hold both the claim and the order. No UNIQUE on
	// order_id, on purpose: the row count shows that idem kept each order to one row.
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS " + q + `.orders (
    order_id    text        NOT NULL,
    customer    text        NOT NULL,
    total_cents bigint      NOT NULL,
    billed_at   timestamptz NOT NULL DEFAULT now())`,
		"TRUNCATE " + q + ".processed, " + q + ".attempts, " + q + ".dead_letters, " + q + ".orders",
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("prepare schema %s: %w", opts.schema, err)
		}
	}
	urlArg := `"$IDEM_DATABASE_URL"`
	if !opts.urlFromEnv {
		urlArg = "'" + dlq.RedactURL(opts.databaseURL) + "'"
	}
	return &backend{
		describe: fmt.Sprintf("PostgreSQL %s, schema %s (tables emptied: every run starts clean)", where, opts.schema),
		store:    store,
		handler: postgres.Handler(func(ctx context.Context, tx pgx.Tx, o OrderPlaced) error {
			if err := g.bill(ctx, eventIDOf(ctx), o); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+q+".orders (order_id, customer, total_cents) VALUES ($1, $2, $3)",
				o.ID, o.Customer, o.TotalCents)
			return err
		}),
		counts: func(ctx context.Context) (int64, int64, int64, error) {
			var orders int64
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+q+".orders").Scan(&orders); err != nil {
				return 0, 0, 0, fmt.Errorf("count orders: %w", err)
			}
			st, err := store.Stats(ctx)
			return orders, st.Processed, st.PendingDeadLetters, err
		},
		deadLetters: func(ctx context.Context) ([]deadLetter, error) {
			rows, err := pool.Query(ctx, "SELECT reason, consumer, event_id, attempts, error FROM "+q+".dead_letters ORDER BY reason, event_id")
			if err != nil {
				return nil, fmt.Errorf("read dead letters: %w", err)
			}
			defer rows.Close()
			var out []deadLetter
			for rows.Next() {
				var d deadLetter
				if err := rows.Scan(&d.reason, &d.consumer, &d.eventID, &d.attempts, &d.err); err != nil {
					return nil, fmt.Errorf("read dead letters: %w", err)
				}
				out = append(out, d)
			}
			return out, rows.Err()
		},
		next: []string{
			"review the dead letters:",
			fmt.Sprintf("  go run ./cmd/idem dlq report --database-url %s --schema %s", urlArg, opts.schema),
			fmt.Sprintf("see every attempt, retry and dead letter in %s, or rerun with -v", opts.logPath),
		},
		close: pool.Close,
	}, nil
}

// logCounts counts idem's log records that the summary reports.
type logCounts struct {
	duplicates, retries atomic.Int64
}

// logCounter is a slog.Handler that counts idem's records by message, at every level,
// and passes on to next the records next is enabled for.
type logCounter struct {
	next   slog.Handler
	counts *logCounts
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCounter) Handle(ctx context.Context, r slog.Record) error {
	switch r.Message {
	case logDuplicate:
		h.counts.duplicates.Add(1)
	case logRetrying:
		h.counts.retries.Add(1)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *logCounter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &logCounter{next: h.next.WithAttrs(attrs), counts: h.counts}
}

func (h *logCounter) WithGroup(name string) slog.Handler {
	return &logCounter{next: h.next.WithGroup(name), counts: h.counts}
}

// printer writes the report, keeping the first write error.
type printer struct {
	w   io.Writer
	err error
}

func newPrinter(w io.Writer) *printer { return &printer{w: w} }

func (p *printer) line(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// deadLetters prints the dead letters grouped by reason; letters is sorted by reason.
func (p *printer) deadLetters(letters []deadLetter) {
	perReason := map[string]int{}
	for _, d := range letters {
		perReason[d.reason]++
	}
	p.line("dead letters (%d), by reason:", len(letters))
	prev := ""
	for _, d := range letters {
		if d.reason != prev {
			p.line("  %s (%d)", d.reason, perReason[d.reason])
			prev = d.reason
		}
		attempts := "1 attempt"
		if d.attempts != 1 {
			attempts = fmt.Sprintf("%d attempts", d.attempts)
		}
		p.line("    event %s of consumer %s, %s:", shortID(d.eventID), d.consumer, attempts)
		p.line("      %s", firstLine(d.err, 90))
	}
}

// shortID shortens the event IDs idem derives for messages without one
// ("derived:" and a SHA-256 in hex).
func shortID(id string) string {
	if rest, ok := strings.CutPrefix(id, "derived:"); ok && len(rest) > 8 {
		return "derived:" + rest[:8] + "…"
	}
	return id
}

// firstLine returns the first line of s, cut to at most n characters.
func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
