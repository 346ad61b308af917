// Package demo is the scenario the broker examples share: five orders, two of them
// published twice, and a poison message, consumed through idem's whole stack on the
// store of the user's choice (SQLite, or PostgreSQL with IDEM_DATABASE_URL), then a
// report of what happened. Each example brings only its broker.
package demo

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// ConsumerName is the handler's name: its dedup scope.
const ConsumerName = "billing"

// handledTimeout bounds the wait for every message to be acknowledged.
const handledTimeout = 10 * time.Second

// OrderPlaced is the event consumed.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	TotalCents int64  `json:"total_cents"`
}

// The scenario: five orders, two published twice, and one poison message.
const (
	// Orders is how many orders are placed; PoisonEvent the poison message's event ID.
	Orders       = 5
	PoisonEvent  = "evt-poison"
	duplicateOf1 = 2
	duplicateOf2 = 4
)

// Scenario returns the messages to publish. Every copy of one event carries the same
// event_id metadata, the dedup key, and a message UUID of its own.
func Scenario() []*message.Message {
	newMessage := func(eventID, payload string) *message.Message {
		msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
		msg.Metadata.Set("event_id", eventID)
		return msg
	}
	var msgs []*message.Message
	for i := 1; i <= Orders; i++ {
		msgs = append(msgs, newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"order_id":"ord-%d","total_cents":%d}`, i, 1000*i)))
		if i == duplicateOf1 || i == duplicateOf2 {
			// A publish retried after a timeout, when the first had gone through.
			msgs = append(msgs, newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"order_id":"ord-%d","total_cents":%d}`, i, 1000*i)))
		}
	}
	return append(msgs, newMessage(PoisonEvent, "{not json"))
}

// StoreOptions chooses the store.
type StoreOptions struct {
	// DatabaseURL selects PostgreSQL; empty, the SQLite file DBPath.
	DatabaseURL string
	Schema      string
	DBPath      string
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// AddStoreFlags defines -database-url, -schema and -db on fs; name is the example's.
func AddStoreFlags(fs *flag.FlagSet, o *StoreOptions, name string) {
	fs.StringVar(&o.DatabaseURL, "database-url", os.Getenv("IDEM_DATABASE_URL"), "use PostgreSQL at `URL` instead of SQLite; defaults to $IDEM_DATABASE_URL")
	fs.StringVar(&o.Schema, "schema", "idem_example_"+name, "PostgreSQL `schema` of idem's tables and the example's")
	fs.StringVar(&o.DBPath, "db", "idem-"+name+".db", "SQLite `file`, recreated on every run")
}

// Validate checks the options after parsing.
func (o StoreOptions) Validate() error {
	if !schemaName.MatchString(o.Schema) {
		return fmt.Errorf("-schema must match %s, got %q", schemaName, o.Schema)
	}
	return nil
}

// Broker is what an example brings: a subscription and a publisher on its transport.
type Broker struct {
	// Title names the broker and its queue or stream in the report's first line.
	Title string
	// System is the messaging.system of spans ("rabbitmq", "nats", "redis").
	System string
	// Topic is published to and consumed.
	Topic string
	// AckDeadline is the transport's redelivery deadline (consumer.Config.AckDeadline).
	AckDeadline time.Duration
	Subscriber  message.Subscriber
	Publisher   message.Publisher
	// Drained, when set, reports whether the broker holds no unacknowledged message;
	// Run waits for it after every message was acked.
	Drained func(context.Context) (bool, error)
}

// Run publishes the scenario to b, consumes it through idem on st, and writes the
// report to stdout. It fails when the counts do not add up.
func Run(ctx context.Context, stdout io.Writer, b Broker, st *Store) error {
	duplicates := &atomic.Int64{}
	c, err := consumer.New(consumer.Config{
		Store:           st.store,
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond},
		AckDeadline:     b.AckDeadline,
		MessagingSystem: b.System,
		Logger:          slog.New(duplicateCounter{n: duplicates}),
	})
	if err != nil {
		return err
	}
	defer c.Close()
	msgs := Scenario()
	fmt.Fprintf(stdout, "idem on %s, store %s\n", b.Title, st.describe)
	start := time.Now()
	drained := b.Drained
	if drained == nil {
		drained = func(context.Context) (bool, error) { return true, nil }
	}
	acked, err := consume(ctx, func(r *message.Router, sub message.Subscriber) {
		c.AddConsumerHandler(r, ConsumerName, b.Topic, sub, st.handler)
	}, b.Subscriber, func() error { return b.Publisher.Publish(b.Topic, msgs...) }, len(msgs), drained)
	if err != nil {
		return err
	}
	rows, processed, deadLetters, err := st.counts(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published %d messages: %d orders, %d copies, 1 poison; all acked in %s\n",
		len(msgs), Orders, len(msgs)-Orders-1, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  processed:          %d  (%d rows in orders)\n", processed, rows)
	fmt.Fprintf(stdout, "  duplicates skipped: %d\n", duplicates.Load())
	fmt.Fprintf(stdout, "  dead-lettered:      %d  %s\n", deadLetters, st.deadLetter(ctx))
	if acked != int64(len(msgs)) || rows != processed || processed+duplicates.Load()+deadLetters != acked {
		return fmt.Errorf("the counts do not add up: %d acked, %d processed, %d rows, %d duplicates, %d dead letters",
			acked, processed, rows, duplicates.Load(), deadLetters)
	}
	return nil
}

// ReportLines are lines Run prints when everything went as the scenario says: the
// examples' smoke tests look for them.
func ReportLines() []string {
	return []string{
		fmt.Sprintf("published %d messages: %d orders, 2 copies, 1 poison; all acked in ", Orders+3, Orders),
		fmt.Sprintf("  processed:          %d  (%d rows in orders)\n", Orders, Orders),
		"  duplicates skipped: 2\n",
		"  dead-lettered:      1  " + PoisonEvent + ": permanent, 1 attempt(s)\n",
	}
}

// consume runs a router with register's handler on sub, publishes, and stops the
// router once want messages were acknowledged and drained reports that the broker has
// them all: watermill-redisstream sends an ack (XACK) after the handler acked, and
// drops it when the subscriber closes first, leaving the message pending until another
// consumer claims it (and idem skips it). It returns how many were acknowledged.
func consume(ctx context.Context, register func(*message.Router, message.Subscriber), sub message.Subscriber, publish func() error, want int,
	drained func(context.Context) (bool, error)) (int64, error) {
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return 0, err
	}
	acked := &atomic.Int64{}
	allAcked := make(chan struct{})
	register(r, countingSubscriber{Subscriber: sub, acked: acked, want: int64(want), done: allAcked})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	select {
	case <-r.Running():
	case err := <-done:
		return 0, err
	}
	publishErr := publish()
	if publishErr == nil {
		timeout := time.After(handledTimeout)
		select {
		case <-allAcked:
			publishErr = waitDrained(ctx, drained, timeout)
		case <-timeout:
			publishErr = fmt.Errorf("only %d of %d messages acked after %s", acked.Load(), want, handledTimeout)
		case <-ctx.Done():
			publishErr = ctx.Err()
		}
	} else {
		publishErr = fmt.Errorf("publish: %w", publishErr)
	}
	cancel()
	return acked.Load(), errors.Join(publishErr, r.Close(), <-done)
}

// waitDrained polls drained until it reports true, timeout fires or ctx ends.
func waitDrained(ctx context.Context, drained func(context.Context) (bool, error), timeout <-chan time.Time) error {
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		ok, err := drained(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-poll.C:
		case <-timeout:
			return fmt.Errorf("the broker still holds unacknowledged messages after %s", handledTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// countingSubscriber counts the messages the router acks, and closes done when there
// are want of them.
type countingSubscriber struct {
	message.Subscriber
	acked *atomic.Int64
	want  int64
	done  chan struct{}
}

func (s countingSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for msg := range in {
			go func() {
				select {
				case <-msg.Acked():
					if s.acked.Add(1) == s.want {
						close(s.done)
					}
				case <-msg.Nacked():
				}
			}()
			select {
			case out <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// duplicateCounter is a slog.Handler that counts idem's "duplicate skipped" records and
// prints warnings and errors on standard error, except the dead letter the report shows.
type duplicateCounter struct {
	n     *atomic.Int64
	attrs []slog.Attr
}

func (h duplicateCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h duplicateCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "idem: duplicate skipped" {
		h.n.Add(1)
	}
	if r.Level < slog.LevelWarn || r.Message == "idem: message dead-lettered" {
		return nil
	}
	return slog.NewTextHandler(os.Stderr, nil).WithAttrs(h.attrs).Handle(ctx, r)
}

func (h duplicateCounter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return duplicateCounter{n: h.n, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

func (h duplicateCounter) WithGroup(string) slog.Handler { return h }

// Store is idem's store with the example's orders table beside it.
type Store struct {
	describe string
	store    consumer.Store
	handler  message.NoPublishHandlerFunc
	// counts returns the rows in orders, the events processed, the dead letters.
	counts func(ctx context.Context) (rows, processed, deadLetters int64, err error)
	// deadLetter describes the dead letters.
	deadLetter func(ctx context.Context) string
	close      func()
}

// OpenStore opens the store opts choose, with the example's orders table, emptied.
func OpenStore(ctx context.Context, opts StoreOptions) (*Store, error) {
	if opts.DatabaseURL != "" {
		return openPostgres(ctx, opts)
	}
	return openSQLite(ctx, opts)
}

func openSQLite(ctx context.Context, opts StoreOptions) (*Store, error) {
	for _, f := range []string{opts.DBPath, opts.DBPath + "-wal", opts.DBPath + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	s, err := sqlite.Open(ctx, opts.DBPath, sqlite.Config{Migrate: true})
	if err != nil {
		return nil, err
	}
	db := s.DB()
	// No UNIQUE on order_id, on purpose: the row count shows that idem kept each order
	// to one row.
	if _, err := db.ExecContext(ctx, "CREATE TABLE orders (order_id TEXT NOT NULL, total_cents INTEGER NOT NULL) STRICT"); err != nil {
		s.Close()
		return nil, fmt.Errorf("create the orders table: %w", err)
	}
	return &Store{
		describe: "SQLite " + opts.DBPath,
		store:    s,
		handler: sqlite.Handler(func(ctx context.Context, tx *sql.Tx, o OrderPlaced) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO orders (order_id, total_cents) VALUES (?1, ?2)", o.OrderID, o.TotalCents)
			return err
		}),
		counts: func(ctx context.Context) (int64, int64, int64, error) {
			var rows int64
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&rows); err != nil {
				return 0, 0, 0, fmt.Errorf("count orders: %w", err)
			}
			st, err := s.Stats(ctx)
			return rows, st.Processed, st.PendingDeadLetters, err
		},
		deadLetter: func(ctx context.Context) string {
			d, err := s.DeadLetter(ctx, ConsumerName, PoisonEvent)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("%s: %s, %d attempt(s)", d.EventID, d.Reason, d.Attempts)
		},
		close: func() { s.Close() },
	}, nil
}

func openPostgres(ctx context.Context, opts StoreOptions) (*Store, error) {
	pool, err := pgxpool.New(ctx, opts.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: opts.Schema}); err != nil {
		pool.Close()
		return nil, err
	}
	s, err := postgres.New(pool, postgres.Config{Schema: opts.Schema})
	if err != nil {
		pool.Close()
		return nil, err
	}
	q := pgx.Identifier{opts.Schema}.Sanitize()
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS " + q + ".orders (order_id text NOT NULL, total_cents bigint NOT NULL)",
		"TRUNCATE " + q + ".processed, " + q + ".attempts, " + q + ".dead_letters, " + q + ".orders",
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			pool.Close()
			return nil, fmt.Errorf("prepare schema %s: %w", opts.Schema, err)
		}
	}
	return &Store{
		describe: "PostgreSQL, schema " + opts.Schema,
		store:    s,
		handler: postgres.Handler(func(ctx context.Context, tx pgx.Tx, o OrderPlaced) error {
			_, err := tx.Exec(ctx, "INSERT INTO "+q+".orders (order_id, total_cents) VALUES ($1, $2)", o.OrderID, o.TotalCents)
			return err
		}),
		counts: func(ctx context.Context) (int64, int64, int64, error) {
			var rows int64
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+q+".orders").Scan(&rows); err != nil {
				return 0, 0, 0, fmt.Errorf("count orders: %w", err)
			}
			st, err := s.Stats(ctx)
			return rows, st.Processed, st.PendingDeadLetters, err
		},
		deadLetter: func(ctx context.Context) string {
			d, err := s.DeadLetter(ctx, ConsumerName, PoisonEvent)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("%s: %s, %d attempt(s)", d.EventID, d.Reason, d.Attempts)
		},
		close: pool.Close,
	}, nil
}

// Close closes the store.
func (s *Store) Close() { s.close() }
