// Monolith shows idem in a modular monolith: modules talk through past-tense domain
// events on an in-process bus, with no broker and no database server, and the same
// handlers move to a broker later by changing two constructors, the pub/sub's and the
// store's:
//
//	go run ./examples/monolith                                            # gochannel + a SQLite file
//	IDEM_DATABASE_URL=postgres://… go run ./examples/monolith -backend sql # watermill-sql + PostgreSQL
//
// Four modules share the process and one database, each with tables of its own:
//
//   - orders places an order in its orders table inside a transaction, commits, and
//     then publishes OrderPlaced (version 1).
//   - payments reacts to OrderPlaced: it records the payment through the transaction
//     idem gives it and returns PaymentCaptured, which the router publishes once the
//     handler has returned.
//   - notifications reacts to OrderPlaced too, independently: its handler name is its
//     own dedup scope, so one event is applied once by payments and once by
//     notifications.
//   - shipping reacts to PaymentCaptured.
//
// What goes wrong: the OrderPlaced of one order is published twice (a publish retried
// after a timeout, when the first had gone through), and every consumer skips the
// copy; a newer build of orders, half-way through a rolling deploy, publishes an
// OrderPlaced version 2 that today's typed handlers do not know, and each of them
// dead-letters it as permanent rather than misreading it.
//
// Known gap, kept to show it: orders publishes after its transaction committed
// (publish-after-commit), so a crash between the COMMIT and the publish loses the
// event; outbox.PublishTx writes it in the same transaction instead. The messages
// payments returns are published by idem inside the attempt, before its COMMIT, so
// they are never lost (at least once; consumer.Config.Outbox makes them exactly once
// in effect).
//
// By default the bus is Watermill's in-process gochannel and the store is idem's
// embedded SQLite store in the file idem-monolith.db (flag -db), recreated on every
// run. With -backend sql the bus is watermill-sql and the store PostgreSQL, both in the
// database of IDEM_DATABASE_URL (or -database-url), in the schema idem_monolith (flag
// -schema), whose example tables are emptied at the start of every run. -v prints idem's
// and Watermill's logs on standard error.
package main

import (
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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "monolith:", err)
		stop()
		os.Exit(1)
	}
}

// The scenario.
const (
	firstOrder   = 1001 // orders are ord-1001, ord-1002, …
	ordersPlaced = 5    // ord-1001 to ord-1005, announced with OrderPlaced version 1
	republished  = 1002 // its OrderPlaced is published a second time
	newerBuild   = 1006 // placed by the next release of orders, which publishes OrderPlaced version 2
)

// The consumers: each handler name is a dedup scope, stable across deploys and never
// shared by two handlers.
const (
	payments      = "payments"
	notifications = "notifications"
	shipping      = "shipping"
)

var consumers = []string{payments, notifications, shipping}

// retryPolicy keeps the demo fast. MaxElapsedTime bounds in-process retrying of one
// delivery; it must stay below the transport's ack deadline (watermill-sql: 30s),
// which consumer.New checks.
var retryPolicy = retry.Policy{
	MaxAttempts:     3,
	InitialInterval: 10 * time.Millisecond,
	MaxInterval:     50 * time.Millisecond,
	MaxElapsedTime:  10 * time.Second,
}

// handledTimeout bounds the wait for every delivery to be handled.
const handledTimeout = 30 * time.Second

// ---- The events ----
//
// Events are named in the past tense: something that happened, announced by the
// module that owns it. Every message carries the metadata event_id (the dedup key,
// the same on every copy of one event), event_type and event_version.

// OrderPlaced is published by orders once an order has committed. Version 1.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

// PaymentCaptured is published by payments once a payment is recorded. Version 1.
type PaymentCaptured struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

// orderPlacedV2 is what the next release of orders publishes: the total became an
// amount with a currency. Decoded as version 1 it would not fail: unknown fields are
// ignored, and the order would be paid with a total of 0. Hence the version check.
type orderPlacedV2 struct {
	OrderID  string `json:"order_id"`
	Customer string `json:"customer"`
	Total    struct {
		Amount   string `json:"amount"`
		Currency string `json:"currency"`
	} `json:"total"`
}

// schema names an event type and the major version of its payload.
type schema struct {
	Type  string
	Major int
}

var (
	orderPlacedV1     = schema{"OrderPlaced", 1}
	paymentCapturedV1 = schema{"PaymentCaptured", 1}
)

// check refuses a message of another event type or another major version with a
// permanent error: no retry makes this build understand it, so idem dead-letters it on
// its first failure and keeps it, byte for byte, to be replayed once consumers that
// know it are deployed. Minor versions ("1.3") only add fields, which decoding ignores.
func (s schema) check(md message.Metadata) error {
	if t := md.Get(middleware.EventTypeKey); t != s.Type {
		return retry.Permanent(fmt.Errorf("event_type %q: this handler reads %s", t, s.Type))
	}
	v := md.Get(middleware.EventVersionKey)
	major, _, _ := strings.Cut(v, ".")
	if n, err := strconv.Atoi(major); err != nil || n != s.Major || major != strconv.Itoa(n) {
		return retry.Permanent(fmt.Errorf("%s event_version %q: this handler knows version %d only", s.Type, v, s.Major))
	}
	return nil
}

// newEvent returns a message carrying payload as JSON, with its event ID, type and
// version in the metadata.
func newEvent(s schema, eventID string, payload any) (*message.Message, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", s.Type, err)
	}
	msg := message.NewMessage(watermill.NewUUID(), body)
	msg.Metadata.Set(dedup.MetadataKey, eventID)
	msg.Metadata.Set(middleware.EventTypeKey, s.Type)
	msg.Metadata.Set(middleware.EventVersionKey, strconv.Itoa(s.Major))
	return msg, nil
}

func orderID(n int) string                { return fmt.Sprintf("ord-%d", n) }
func orderPlacedID(orderID string) string { return "order-placed:" + orderID }

// ---- What a module's handler sees of the database ----

// Tx is all a module's handler needs from the database: the transaction idem runs the
// attempt in, whose writes commit together with the event's claim. The transactions
// of both stores fit it in three lines (sqliteTx, pgxTx), which is what keeps the
// handlers unchanged from one deployment to the other. The SQL uses $1 placeholders
// and column types that SQLite and PostgreSQL both accept.
type Tx interface {
	Exec(ctx context.Context, query string, args ...any) error
}

// on adapts a module's typed handler to Watermill: it refuses an event type or major
// version it does not know (permanent), decodes the payload (consumer.Decode: a
// payload that does not decode is permanent too), and runs fn with the attempt's
// transaction. Register it through a consumer.Consumer, which provides that
// transaction.
func on[T any](st *storage, s schema, fn func(ctx context.Context, tx Tx, event T) ([]*message.Message, error)) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if err := s.check(msg.Metadata); err != nil {
			return nil, err
		}
		event, err := consumer.Decode[T](msg.Payload)
		if err != nil {
			return nil, err
		}
		ctx := msg.Context()
		tx, ok := st.txFromContext(ctx)
		if !ok {
			return nil, retry.Infrastructure(errors.New("no idem transaction in the message context: register the handler through consumer.Consumer"))
		}
		return fn(ctx, tx, event)
	}
}

// onEach is [on] for a handler that produces no messages.
func onEach[T any](st *storage, s schema, fn func(ctx context.Context, tx Tx, event T) error) message.NoPublishHandlerFunc {
	h := on(st, s, func(ctx context.Context, tx Tx, event T) ([]*message.Message, error) {
		return nil, fn(ctx, tx, event)
	})
	return func(msg *message.Message) error {
		_, err := h(msg)
		return err
	}
}

// ---- The modules ----

// moduleTables are the modules' own tables, beside idem's in the same database: that is
// what lets one transaction hold a handler's writes and the event's claim. No UNIQUE
// constraint on order_id, on purpose: the row counts show that idem, not a constraint,
// kept each effect to one row.
var moduleTables = []struct{ name, ddl string }{
	{"orders", "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL)"},
	{"payments", "CREATE TABLE payments (order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL)"},
	{"notifications", "CREATE TABLE notifications (order_id TEXT NOT NULL, kind TEXT NOT NULL)"},
	{"shipments", "CREATE TABLE shipments (order_id TEXT NOT NULL)"},
}

// orders owns the orders table and announces OrderPlaced. It is not a consumer: it
// writes in a transaction of its own, then publishes.
type orders struct {
	st        *storage
	pub       message.Publisher
	topic     string
	published int // OrderPlaced messages published
}

type order struct {
	id         string
	customer   string
	totalCents int64
}

// Place stores o and announces it. The event is published only after the order's
// transaction committed (publish-after-commit), so no consumer ever hears of an order
// that rolled back. Known gap, until the outbox exists: a crash between the COMMIT and
// the publish loses the event. The outbox will write it in the same transaction.
func (m *orders) Place(ctx context.Context, o order) error {
	if err := m.insert(ctx, o); err != nil {
		return err
	}
	return m.announce(OrderPlaced{OrderID: o.id, Customer: o.customer, TotalCents: o.totalCents})
}

// announce publishes the OrderPlaced of an order. Called again for the same order, as
// a publish retried after a timeout is, it publishes another copy of the same event:
// the same event_id, which every consumer recognises.
func (m *orders) announce(e OrderPlaced) error {
	msg, err := newEvent(orderPlacedV1, orderPlacedID(e.OrderID), e)
	if err != nil {
		return err
	}
	return m.publish(msg)
}

// placeV2 is Place as the next release of orders does it, with OrderPlaced version 2.
func (m *orders) placeV2(ctx context.Context, o order) error {
	if err := m.insert(ctx, o); err != nil {
		return err
	}
	e := orderPlacedV2{OrderID: o.id, Customer: o.customer}
	e.Total.Amount, e.Total.Currency = fmt.Sprintf("%d.%02d", o.totalCents/100, o.totalCents%100), "EUR"
	msg, err := newEvent(schema{"OrderPlaced", 2}, orderPlacedID(o.id), e)
	if err != nil {
		return err
	}
	return m.publish(msg)
}

func (m *orders) insert(ctx context.Context, o order) error {
	err := m.st.inTx(ctx, func(tx Tx) error {
		return tx.Exec(ctx, "INSERT INTO orders (order_id, customer, total_cents) VALUES ($1, $2, $3)", o.id, o.customer, o.totalCents)
	})
	if err != nil {
		return fmt.Errorf("orders: place %s: %w", o.id, err)
	}
	return nil
}

func (m *orders) publish(msg *message.Message) error {
	if err := m.pub.Publish(m.topic, msg); err != nil {
		return fmt.Errorf("orders: publish %s: %w", msg.Metadata.Get(dedup.MetadataKey), err)
	}
	m.published++
	return nil
}

// capturePayment is the payments module's handler of OrderPlaced. It records the
// payment and announces it; the router publishes PaymentCaptured once the handler
// returned, outside the event's transaction (until the outbox exists).
//
// The event ID is derived from what happened (this order's payment), never random: on
// watermill-sql the router publishes before the subscriber's transaction, which holds
// the claim, commits. Should that commit fail, payments runs again and publishes again,
// and the same ID makes the copy a duplicate for shipping.
func capturePayment(ctx context.Context, tx Tx, e OrderPlaced) ([]*message.Message, error) {
	if err := tx.Exec(ctx, "INSERT INTO payments (order_id, amount_cents) VALUES ($1, $2)", e.OrderID, e.TotalCents); err != nil {
		return nil, err
	}
	captured, err := newEvent(paymentCapturedV1, "payment-captured:"+e.OrderID, PaymentCaptured{OrderID: e.OrderID, AmountCents: e.TotalCents})
	if err != nil {
		return nil, err
	}
	return []*message.Message{captured}, nil
}

// queueConfirmation is the notifications module's handler of OrderPlaced: it queues
// the order confirmation in its own table, for a mailer to send. (Calling a mail
// service from the handler instead would not be covered by idem's transaction: pass
// the event ID along as the idempotency key.)
func queueConfirmation(ctx context.Context, tx Tx, e OrderPlaced) error {
	return tx.Exec(ctx, "INSERT INTO notifications (order_id, kind) VALUES ($1, 'order-confirmation')", e.OrderID)
}

// scheduleShipment is the shipping module's handler of PaymentCaptured.
func scheduleShipment(ctx context.Context, tx Tx, e PaymentCaptured) error {
	return tx.Exec(ctx, "INSERT INTO shipments (order_id) VALUES ($1)", e.OrderID)
}

// ---- The two constructors that differ between deployments ----

// bus is what the pub/sub constructor returns.
type bus struct {
	describe string
	pub      message.Publisher
	// subs holds each consumer's subscriber.
	subs map[string]message.Subscriber
	// ackDeadline is how long the subscriber waits for an ack before it redelivers on
	// its own; 0 when it has no such deadline.
	ackDeadline time.Duration
	close       func() error
}

// newGoChannel is the in-process bus. gochannel hands every subscriber every message,
// so each module consumes the whole topic.
func newGoChannel(wlog watermill.LoggerAdapter) *bus {
	ps := gochannel.NewGoChannel(gochannel.Config{}, wlog)
	subs := map[string]message.Subscriber{}
	for _, name := range consumers {
		subs[name] = ps
	}
	return &bus{
		describe: "Watermill gochannel, in-process (no broker)",
		pub:      ps,
		subs:     subs,
		close:    ps.Close,
	}
}

// newWatermillSQL is watermill-sql on PostgreSQL. Each module is its own consumer
// group, so that each reads the whole topic. The subscriber consumes each batch of
// messages inside a transaction; idem claims in a savepoint of it, so the claim, the
// handler's writes and the consumed offset commit together.
func newWatermillSQL(ctx context.Context, pool *pgxpool.Pool, t topics, wlog watermill.LoggerAdapter) (*bus, error) {
	// Every run starts clean: drop this example's topic tables (in the -schema, which
	// the pool's search_path points at).
	for _, topic := range []string{t.orderPlaced, t.paymentCaptured} {
		tables := pgx.Identifier{"watermill_" + topic}.Sanitize() + ", " + pgx.Identifier{"watermill_offsets_" + topic}.Sanitize()
		if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+tables); err != nil {
			return nil, fmt.Errorf("drop the topic tables of %s: %w", topic, err)
		}
	}
	db := wsql.BeginnerFromPgx(pool)
	adapter := wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}
	pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: adapter}, wlog)
	if err != nil {
		return nil, err
	}
	subCfg := wsql.SubscriberConfig{
		SchemaAdapter:  adapter,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		// Creates the topic tables when the router subscribes, before anything is
		// published. A production deployment creates them with its migrations.
		InitializeSchema: true,
		PollInterval:     20 * time.Millisecond,
		ResendInterval:   50 * time.Millisecond,
		// AckDeadline left nil: watermill-sql's default of 30s.
	}
	subs := map[string]message.Subscriber{}
	for _, name := range consumers {
		cfg := subCfg
		cfg.ConsumerGroup = name
		sub, err := wsql.NewSubscriber(db, cfg, wlog)
		if err != nil {
			return nil, errors.Join(err, pub.Close())
		}
		subs[name] = sub
	}
	return &bus{
		describe: fmt.Sprintf("watermill-sql on PostgreSQL, topics %s and %s, one consumer group per module", t.orderPlaced, t.paymentCaptured),
		pub:      pub,
		subs:     subs,
		// The consumer's retry budget must end before the subscriber redelivers.
		ackDeadline: postgres.SubscriberAckDeadline(subCfg),
		close: func() error {
			errs := []error{pub.Close()}
			for _, sub := range subs {
				errs = append(errs, sub.Close())
			}
			return errors.Join(errs...)
		},
	}, nil
}

// storage is what the store constructor returns: idem's store, and the same database
// for the modules' tables.
type storage struct {
	describe string
	store    consumer.Store
	// txFromContext returns the transaction idem runs the current attempt in.
	txFromContext func(ctx context.Context) (Tx, bool)
	// inTx runs fn in a transaction of its own, committed when fn returns nil.
	inTx func(ctx context.Context, fn func(tx Tx) error) error
	// query runs q and calls each for every row, with the row's Scan.
	query func(ctx context.Context, q string, each func(scan func(dest ...any) error) error, args ...any) error
	close func()
}

type sqliteTx struct{ tx *sql.Tx }

func (t sqliteTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, query, args...)
	return err
}

type pgxTx struct{ tx pgx.Tx }

func (t pgxTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.Exec(ctx, query, args...)
	return err
}

// openSQLite is idem's embedded store in a local file, recreated on every run.
func openSQLite(ctx context.Context, path string) (*storage, error) {
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	store, err := sqlite.Open(ctx, path, sqlite.Config{Migrate: true})
	if err != nil {
		return nil, err
	}
	db := store.DB()
	return &storage{
		describe: fmt.Sprintf("SQLite file %s, idem's tables beside the modules' (recreated on every run)", path),
		store:    store,
		txFromContext: func(ctx context.Context) (Tx, bool) {
			tx, ok := sqlite.TxFromContext(ctx)
			return sqliteTx{tx}, ok
		},
		inTx: func(ctx context.Context, fn func(Tx) error) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if err := fn(sqliteTx{tx}); err != nil {
				return errors.Join(err, tx.Rollback())
			}
			return tx.Commit()
		},
		query: func(ctx context.Context, q string, each func(func(...any) error) error, args ...any) error {
			rows, err := db.QueryContext(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := each(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
		close: func() { store.Close() },
	}, nil
}

// openPostgres is idem's PostgreSQL store in schema, on pool, whose search_path is
// schema too: the modules' tables and watermill-sql's live there as well.
func openPostgres(ctx context.Context, pool *pgxpool.Pool, schema string) (*storage, error) {
	// A deployment runs `idem migrate --schema …` before it starts; the example
	// migrates by itself.
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}); err != nil {
		return nil, err
	}
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "TRUNCATE "+q+".processed, "+q+".attempts, "+q+".dead_letters, "+q+".started CASCADE"); err != nil {
		return nil, fmt.Errorf("empty idem's tables in schema %s: %w", schema, err)
	}
	return &storage{
		describe: fmt.Sprintf("PostgreSQL, schema %s: idem's tables beside the modules' (emptied on every run)", schema),
		store:    store,
		txFromContext: func(ctx context.Context) (Tx, bool) {
			tx, ok := postgres.TxFromContext(ctx)
			return pgxTx{tx}, ok
		},
		inTx: func(ctx context.Context, fn func(Tx) error) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fn(pgxTx{tx}) })
		},
		query: func(ctx context.Context, q string, each func(func(...any) error) error, args ...any) error {
			rows, err := pool.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := each(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
		close: func() {},
	}, nil
}

// connectPostgres opens a pool whose search_path is schema.
func connectPostgres(ctx context.Context, opts options) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(opts.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("the PostgreSQL URL does not parse: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = opts.schema
	// Each watermill-sql subscriber holds a connection for the transaction of the batch
	// it is consuming, while idem's bookkeeping and the router's publishing need others.
	cfg.MaxConns = max(cfg.MaxConns, int32(len(consumers))+8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s@%s:%d/%s: %w", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// ---- The program ----

type topics struct{ orderPlaced, paymentCaptured string }

type options struct {
	backend     string
	dbPath      string
	databaseURL string
	schema      string
	topicPrefix string
	verbose     bool
}

// topicPrefixRE keeps topics valid for watermill-sql, whose offsets table is named
// watermill_offsets_<topic> and must fit PostgreSQL's 63-byte identifiers.
var topicPrefixRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,27}$`)

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("monolith", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&opts.backend, "backend", "gochannel", "`BACKEND`: gochannel (in-process, SQLite) or sql (watermill-sql, PostgreSQL)")
	fs.StringVar(&opts.dbPath, "db", "idem-monolith.db", "the SQLite database `FILE` of -backend gochannel; removed first")
	fs.StringVar(&opts.databaseURL, "database-url", os.Getenv("IDEM_DATABASE_URL"), "the PostgreSQL `URL` of -backend sql; defaults to $IDEM_DATABASE_URL")
	fs.StringVar(&opts.schema, "schema", "idem_monolith", "the PostgreSQL `SCHEMA` of -backend sql: idem's, the modules' and the topics' tables")
	fs.StringVar(&opts.topicPrefix, "topic-prefix", "monolith", "`PREFIX` of the topic names")
	fs.BoolVar(&opts.verbose, "v", false, "print idem's and Watermill's logs on standard error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: go run ./examples/monolith [flags]")
			fs.PrintDefaults()
			return opts, err
		}
		return opts, fmt.Errorf("%w (see -h)", err)
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	switch opts.backend {
	case "gochannel":
	case "sql":
		if opts.databaseURL == "" {
			return opts, errors.New("-backend sql needs a PostgreSQL URL: set IDEM_DATABASE_URL or -database-url")
		}
		if err := postgres.ValidateIdentifier("-schema", opts.schema); err != nil {
			return opts, err
		}
	default:
		return opts, fmt.Errorf("-backend must be gochannel or sql, got %q", opts.backend)
	}
	if !topicPrefixRE.MatchString(opts.topicPrefix) {
		return opts, fmt.Errorf("-topic-prefix must match %s, got %q", topicPrefixRE, opts.topicPrefix)
	}
	return opts, nil
}

// run runs the monolith with the command-line arguments args, and writes its report
// to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	opts, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logOut := io.Discard
	if opts.verbose {
		logOut = os.Stderr
	}
	dups := &duplicates{byConsumer: map[string]int64{}}
	logger := slog.New(dups.handler(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug})))
	wlog := watermill.LoggerAdapter(watermill.NopLogger{})
	if opts.verbose {
		wlog = watermill.NewSlogLogger(slog.New(slog.NewTextHandler(logOut, nil)))
	}
	t := topics{orderPlaced: opts.topicPrefix + "_order_placed", paymentCaptured: opts.topicPrefix + "_payment_captured"}

	// The one place where the two deployments differ: the pub/sub constructor and the
	// store constructor. Everything below, the handlers included, is the same.
	var b *bus
	var st *storage
	switch opts.backend {
	case "gochannel":
		b = newGoChannel(wlog)
		st, err = openSQLite(ctx, opts.dbPath)
	case "sql":
		pool, perr := connectPostgres(ctx, opts)
		if perr != nil {
			return perr
		}
		defer pool.Close()
		b, err = newWatermillSQL(ctx, pool, t, wlog)
		if err == nil {
			st, err = openPostgres(ctx, pool, opts.schema)
		}
	}
	if b != nil {
		defer func() { err = errors.Join(err, b.close()) }()
	}
	if err != nil {
		return err
	}
	defer st.close()

	for _, table := range moduleTables {
		if err := st.inTx(ctx, func(tx Tx) error {
			if err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+table.name); err != nil {
				return err
			}
			return tx.Exec(ctx, table.ddl)
		}); err != nil {
			return fmt.Errorf("create table %s: %w", table.name, err)
		}
	}

	c, err := consumer.New(consumer.Config{
		Store:       st.store,
		Retry:       retryPolicy,
		AckDeadline: b.ackDeadline,
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return err
	}
	handled := newTally()
	router.AddMiddleware(handled.middleware) // outermost: sees each delivery's final result
	c.AddHandler(router, payments, t.orderPlaced, b.subs[payments], t.paymentCaptured, handled.publisher(b.pub),
		on(st, orderPlacedV1, capturePayment))
	c.AddConsumerHandler(router, notifications, t.orderPlaced, b.subs[notifications],
		onEach(st, orderPlacedV1, queueConfirmation))
	c.AddConsumerHandler(router, shipping, t.paymentCaptured, b.subs[shipping],
		onEach(st, paymentCapturedV1, scheduleShipment))

	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	closeRouter := func() error {
		if err := router.Close(); err != nil {
			return fmt.Errorf("close the router: %w", err)
		}
		return <-runErr
	}
	select {
	case <-router.Running():
	case err := <-runErr:
		return fmt.Errorf("router: %w", err)
	}

	start := time.Now()
	// Publishing through the consumer's publisher gives every event a correlation ID
	// and the trace context of a producer span.
	m := &orders{st: st, pub: c.Publisher(b.pub), topic: t.orderPlaced}
	if err := placeOrders(ctx, m, handled); err != nil {
		return errors.Join(err, closeRouter())
	}
	if err := handled.wait(ctx, handledTimeout); err != nil {
		return errors.Join(err, closeRouter())
	}
	r, err := readReport(ctx, st, handled, dups)
	if err != nil {
		return errors.Join(err, closeRouter())
	}
	r.published = m.published
	took := time.Since(start)
	if err := closeRouter(); err != nil {
		return err
	}
	return r.print(stdout, opts, b, st, took)
}

// placeOrders plays the orders module's part of the scenario, and tells handled how
// many OrderPlaced messages went out.
func placeOrders(ctx context.Context, m *orders, handled *tally) error {
	customers := []string{"ada", "grace", "linus", "barbara", "ken"}
	newOrder := func(n int) order {
		return order{id: orderID(n), customer: customers[n%len(customers)], totalCents: int64(1250 + 375*(n%7))}
	}
	for n := firstOrder; n < firstOrder+ordersPlaced; n++ {
		if err := m.Place(ctx, newOrder(n)); err != nil {
			return err
		}
	}
	// The publish of this order's event timed out and was retried, though the first
	// had gone through: a second copy of the same event.
	o := newOrder(republished)
	if err := m.announce(OrderPlaced{OrderID: o.id, Customer: o.customer, TotalCents: o.totalCents}); err != nil {
		return err
	}
	if err := m.placeV2(ctx, newOrder(newerBuild)); err != nil {
		return err
	}
	handled.expect(map[string]int64{payments: int64(m.published), notifications: int64(m.published)})
	return nil
}

// tally counts the deliveries each handler has finished (returned nil: acked), and
// the PaymentCaptured messages payments produced, which shipping has to handle.
type tally struct {
	mu       sync.Mutex
	done     map[string]int64
	produced int64
	want     map[string]int64
	changed  chan struct{}
}

func newTally() *tally {
	return &tally{done: map[string]int64{}, changed: make(chan struct{}, 1)}
}

func (t *tally) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		produced, err := h(msg)
		if err == nil {
			t.mu.Lock()
			t.done[message.HandlerNameFromCtx(msg.Context())]++
			t.mu.Unlock()
			t.notify()
		}
		return produced, err
	}
}

// publisher counts the messages published through pub: the PaymentCaptured messages
// payments produces (idem publishes them inside the attempt, before its commit).
func (t *tally) publisher(pub message.Publisher) message.Publisher {
	return countingPublisher{Publisher: pub, t: t}
}

type countingPublisher struct {
	message.Publisher
	t *tally
}

func (p countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	p.t.mu.Lock()
	p.t.produced += int64(len(msgs))
	p.t.mu.Unlock()
	p.t.notify()
	return nil
}

func (t *tally) notify() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *tally) expect(want map[string]int64) {
	t.mu.Lock()
	t.want = want
	t.mu.Unlock()
	t.notify()
}

// finished reports whether every handler has handled all it was sent.
func (t *tally) finished() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.want != nil && t.done[payments] >= t.want[payments] &&
		t.done[notifications] >= t.want[notifications] && t.done[shipping] >= t.produced
}

func (t *tally) count(name string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done[name]
}

func (t *tally) total() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, d := range t.done {
		n += d
	}
	return n
}

func (t *tally) wait(ctx context.Context, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !t.finished() {
		select {
		case <-t.changed:
		case <-timer.C:
			t.mu.Lock()
			defer t.mu.Unlock()
			return fmt.Errorf("not every delivery was handled within %s (handled %v, expected %v and %d for shipping); rerun with -v", timeout, t.done, t.want, t.produced)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// duplicates counts idem's "duplicate skipped" log records per consumer.
type duplicates struct {
	mu         sync.Mutex
	byConsumer map[string]int64
}

func (d *duplicates) get(name string) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byConsumer[name]
}

func (d *duplicates) handler(next slog.Handler) slog.Handler { return &dupHandler{next: next, d: d} }

type dupHandler struct {
	next slog.Handler
	d    *duplicates
}

func (h *dupHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *dupHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "idem: duplicate skipped" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "consumer" {
				h.d.mu.Lock()
				h.d.byConsumer[a.Value.String()]++
				h.d.mu.Unlock()
				return false
			}
			return true
		})
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *dupHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &dupHandler{next: h.next.WithAttrs(attrs), d: h.d}
}

func (h *dupHandler) WithGroup(name string) slog.Handler {
	return &dupHandler{next: h.next.WithGroup(name), d: h.d}
}

// ---- The report ----

type consumerReport struct {
	name                                            string
	deliveries, processed, duplicates, deadLettered int64
	table                                           string
	rows                                            int64
}

type deadLetter struct{ consumer, eventID, reason, err string }

type report struct {
	consumers  []consumerReport
	orders     int64
	published  int // OrderPlaced messages
	deliveries int64
	scope      []string // the consumers that processed the first order's OrderPlaced
	letters    []deadLetter
}

// readReport reads what happened from the database, once it has settled. It reads
// idem's tables (processed, dead_letters) directly, to show them; an operator uses
// `idem dlq report` and `idem dedup stats`, a program the stores' review methods.
func readReport(ctx context.Context, st *storage, handled *tally, dups *duplicates) (*report, error) {
	r := &report{deliveries: handled.total()}
	tables := map[string]string{payments: "payments", notifications: "notifications", shipping: "shipments"}
	if err := settle(ctx, st, handled, dups); err != nil {
		return nil, err
	}
	processed := map[string]int64{}
	if err := st.query(ctx, "SELECT consumer, count(*) FROM processed GROUP BY consumer", func(scan func(...any) error) error {
		var name string
		var n int64
		err := scan(&name, &n)
		processed[name] = n
		return err
	}); err != nil {
		return nil, fmt.Errorf("count processed events: %w", err)
	}
	if err := st.query(ctx, "SELECT consumer, event_id, reason, error FROM dead_letters ORDER BY consumer, event_id", func(scan func(...any) error) error {
		var d deadLetter
		err := scan(&d.consumer, &d.eventID, &d.reason, &d.err)
		r.letters = append(r.letters, d)
		return err
	}); err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	if err := st.query(ctx, "SELECT consumer FROM processed WHERE event_id = $1 ORDER BY consumer", func(scan func(...any) error) error {
		var name string
		err := scan(&name)
		r.scope = append(r.scope, name)
		return err
	}, orderPlacedID(orderID(firstOrder))); err != nil {
		return nil, fmt.Errorf("read the claims of one event: %w", err)
	}
	count := func(table string) (int64, error) {
		var n int64
		err := st.query(ctx, "SELECT count(*) FROM "+table, func(scan func(...any) error) error { return scan(&n) })
		return n, err
	}
	var err error
	if r.orders, err = count("orders"); err != nil {
		return nil, fmt.Errorf("count orders: %w", err)
	}
	for _, name := range consumers {
		cr := consumerReport{name: name, deliveries: handled.count(name), processed: processed[name], duplicates: dups.get(name), table: tables[name]}
		for _, d := range r.letters {
			if d.consumer == name {
				cr.deadLettered++
			}
		}
		if cr.rows, err = count(cr.table); err != nil {
			return nil, fmt.Errorf("count %s: %w", cr.table, err)
		}
		// Every handled delivery ended in one outcome, and each processed event wrote
		// one row: nothing was applied twice, nothing was lost.
		if cr.rows != cr.processed {
			return nil, fmt.Errorf("effects-once check failed for %s: %d rows in %s but %d events processed", name, cr.rows, cr.table, cr.processed)
		}
		if cr.deliveries != cr.processed+cr.duplicates+cr.deadLettered {
			return nil, fmt.Errorf("outcome check failed for %s: %d deliveries handled, but %d processed + %d duplicates + %d dead-lettered",
				name, cr.deliveries, cr.processed, cr.duplicates, cr.deadLettered)
		}
		r.consumers = append(r.consumers, cr)
	}
	return r, nil
}

// settle waits until every handled delivery's outcome has committed. With SQLite it
// has: idem commits before the handler returns. watermill-sql commits the subscriber's
// transaction, which holds idem's claim, just after the ack.
func settle(ctx context.Context, st *storage, handled *tally, dups *duplicates) error {
	var want int64
	for _, name := range consumers {
		want += handled.count(name) - dups.get(name)
	}
	deadline := time.Now().Add(handledTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var outcomes int64
		err := st.query(ctx, "SELECT (SELECT count(*) FROM processed) + (SELECT count(*) FROM dead_letters)", func(scan func(...any) error) error {
			return scan(&outcomes)
		})
		switch {
		case err != nil:
			return fmt.Errorf("count outcomes: %w", err)
		case outcomes >= want:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("only %d of %d outcomes committed within %s", outcomes, want, handledTimeout)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *report) print(w io.Writer, opts options, b *bus, st *storage, took time.Duration) error {
	p := &printer{w: w}
	p.line("idem monolith: modules react to each other's domain events, each effect once per module")
	p.line("  bus:    %s", b.describe)
	p.line("  store:  %s", st.describe)
	p.line("  gap:    no outbox yet: orders publishes after its COMMIT, so a crash in between loses")
	p.line("          the event; the transactional outbox (planned) will close this gap")
	p.line("")
	p.line("orders placed %d orders and published %d OrderPlaced:", r.orders, r.published)
	p.line("  %s … %s  version 1, each published after its transaction committed", orderID(firstOrder), orderID(firstOrder+ordersPlaced-1))
	p.line("  %-19s  published again: a publish retried after a timeout, though the first went out", orderID(republished))
	p.line("  %-19s  version 2, from a newer build of orders half-way through a rolling deploy", orderID(newerBuild))
	p.line("")
	p.line("all %d deliveries handled in %s:", r.deliveries, took.Round(time.Millisecond))
	p.line("  %-13s  %10s  %9s  %10s  %13s  %s", "consumer", "deliveries", "processed", "duplicates", "dead-lettered", "rows written")
	for _, c := range r.consumers {
		p.line("  %-13s  %10d  %9d  %10d  %13d  %d in %s", c.name, c.deliveries, c.processed, c.duplicates, c.deadLettered, c.rows, c.table)
	}
	p.line("")
	p.line("each handler is its own dedup scope: event %s was processed by %s", orderPlacedID(orderID(firstOrder)), strings.Join(r.scope, ", "))
	p.line("dead letters (%d), kept for a replay once the consumers know the new version:", len(r.letters))
	for _, d := range r.letters {
		p.line("  %-13s  %s  %s: %s", d.consumer, d.eventID, d.reason, d.err)
	}
	p.line("")
	switch opts.backend {
	case "gochannel":
		p.line("next: review the dead letters:  go run ./cmd/idem dlq report --database-url %s", opts.dbPath)
		p.line("      the same handlers on watermill-sql and PostgreSQL, with two other constructors:")
		p.line("      IDEM_DATABASE_URL=postgres://… go run ./examples/monolith -backend sql")
	case "sql":
		p.line("next: review the dead letters (IDEM_DATABASE_URL set):")
		p.line("      go run ./cmd/idem dlq report --schema %s", opts.schema)
	}
	return p.err
}

// printer writes the report, keeping the first write error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}
