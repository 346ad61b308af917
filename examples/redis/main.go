// Redis runs idem's whole stack on Redis Streams: a Watermill router consumes a stream
// through a consumer group (watermill-redisstream), through consumer.New.
//
//	go run ./examples/redis                                         # Redis on localhost, a SQLite file
//	IDEM_DATABASE_URL=postgres://… go run ./examples/redis           # the PostgreSQL store instead
//
// It publishes five OrderPlaced events, two of them twice, and a poison message whose
// payload is not JSON, waits until every message is acknowledged, and prints what
// happened: each order written once, the copies skipped, the poison message
// dead-lettered. The stream (flag -stream) is deleted at the end, with its consumer
// group. For durability, run Redis with an append-only file (appendonly yes).
//
// The broker is $IDEM_REDIS_URL (flag -redis-url, default redis://127.0.0.1:6379/0).
// With no database configured the store is idem's embedded SQLite store in the file
// idem-redis.db (flag -db), recreated on every run; with IDEM_DATABASE_URL (flag
// -database-url) it is PostgreSQL, in the schema idem_example_redis (flag -schema),
// migrated if needed and emptied at the start of every run.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "redis:", err)
		stop()
		os.Exit(1)
	}
}

// consumerName is the handler's name: the dedup scope of its events.
const consumerName = "billing"

// maxIdleTime is the subscriber's MaxIdleTime: a message delivered and not acked for
// that long is claimed by another consumer of the group. It is the ack deadline given
// to consumer.Config.AckDeadline.
const maxIdleTime = 60 * time.Second

// handledTimeout bounds the wait for every message to be acknowledged.
const handledTimeout = 10 * time.Second

// OrderPlaced is the event consumed.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	TotalCents int64  `json:"total_cents"`
}

// The scenario: five orders, two published twice, and one poison message.
const (
	orders       = 5
	poisonEvent  = "evt-poison"
	duplicateOf1 = 2
	duplicateOf2 = 4
)

// scenario returns the messages to publish. Every copy of one event carries the same
// event_id metadata, the dedup key, and a message UUID of its own.
func scenario() []*message.Message {
	newMessage := func(eventID, payload string) *message.Message {
		msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
		msg.Metadata.Set("event_id", eventID)
		return msg
	}
	var msgs []*message.Message
	for i := 1; i <= orders; i++ {
		msgs = append(msgs, newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"order_id":"ord-%d","total_cents":%d}`, i, 1000*i)))
		if i == duplicateOf1 || i == duplicateOf2 {
			// A publish retried after a timeout, when the first had gone through.
			msgs = append(msgs, newMessage(fmt.Sprintf("evt-%d", i), fmt.Sprintf(`{"order_id":"ord-%d","total_cents":%d}`, i, 1000*i)))
		}
	}
	return append(msgs, newMessage(poisonEvent, "{not json"))
}

type options struct {
	brokerURL   string
	stream      string
	databaseURL string
	schema      string
	dbPath      string
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("redis", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&opts.brokerURL, "redis-url", cmp.Or(os.Getenv("IDEM_REDIS_URL"), "redis://127.0.0.1:6379/0"), "Redis at `URL`; defaults to $IDEM_REDIS_URL")
	fs.StringVar(&opts.stream, "stream", "idem_example_orders", "the `stream` to publish to and consume, deleted at the end")
	fs.StringVar(&opts.databaseURL, "database-url", os.Getenv("IDEM_DATABASE_URL"), "use PostgreSQL at `URL` instead of SQLite; defaults to $IDEM_DATABASE_URL")
	fs.StringVar(&opts.schema, "schema", "idem_example_redis", "PostgreSQL `schema` of idem's tables and the example's")
	fs.StringVar(&opts.dbPath, "db", "idem-redis.db", "SQLite `file`, recreated on every run")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !schemaName.MatchString(opts.schema) {
		return opts, fmt.Errorf("-schema must match %s, got %q", schemaName, opts.schema)
	}
	return opts, nil
}

// run runs the example with the command-line arguments args, and writes its report to
// stdout.
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	opts, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := openStore(ctx, opts)
	if err != nil {
		return err
	}
	defer st.close()

	// The broker: a stream read through a consumer group, which the subscriber creates
	// (from the stream's first entry: OldestId "0"). The stream is deleted at the end.
	redisOpts, err := redis.ParseURL(opts.brokerURL)
	if err != nil {
		return fmt.Errorf("-redis-url: %w", err)
	}
	redisOpts.DialTimeout = 5 * time.Second
	admin := redis.NewClient(redisOpts)
	defer admin.Close()
	if err := admin.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("connect to Redis: %w", err)
	}
	defer func() {
		left := "?"
		if p, err := admin.XPending(context.WithoutCancel(ctx), opts.stream, consumerName).Result(); err == nil {
			left = fmt.Sprint(p.Count)
		}
		if cleanupErr := admin.Del(context.WithoutCancel(ctx), opts.stream).Err(); cleanupErr != nil {
			err = errors.Join(err, fmt.Errorf("delete stream %s: %w", opts.stream, cleanupErr))
			return
		}
		fmt.Fprintf(stdout, "stream %s deleted (%s messages pending)\n", opts.stream, left)
	}()
	logger := watermill.NopLogger{}
	// Each subscriber and publisher closes its client when it closes: give each its own.
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client:        redis.NewClient(redisOpts),
		ConsumerGroup: consumerName, // shared by the replicas
		Consumer:      "replica-1",  // distinct per replica
		MaxIdleTime:   maxIdleTime,  // then another consumer of the group claims it
		OldestId:      "0",          // a group created after the first publish still reads it
	}, logger)
	if err != nil {
		return err
	}
	defer sub.Close()
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: redis.NewClient(redisOpts)}, logger)
	if err != nil {
		return err
	}
	defer pub.Close()

	duplicates := &atomic.Int64{}
	c, err := consumer.New(consumer.Config{
		Store:           st.store,
		Retry:           retry.Policy{MaxAttempts: 3, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond},
		AckDeadline:     maxIdleTime,
		MessagingSystem: "redis",
		Logger:          slog.New(duplicateCounter{n: duplicates}),
	})
	if err != nil {
		return err
	}
	msgs := scenario()
	fmt.Fprintf(stdout, "idem on Redis Streams: stream %s, store %s\n", opts.stream, st.describe)
	start := time.Now()
	acked, err := consume(ctx, func(r *message.Router, sub message.Subscriber) {
		c.AddConsumerHandler(r, consumerName, opts.stream, sub, st.handler)
	}, sub, func() error { return pub.Publish(opts.stream, msgs...) }, len(msgs), func(ctx context.Context) (bool, error) {
		p, err := admin.XPending(ctx, opts.stream, consumerName).Result()
		return err == nil && p.Count == 0, err
	})
	if err != nil {
		return err
	}
	rows, processed, deadLetters, err := st.counts(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "published %d messages: %d orders, %d copies, 1 poison; all acked in %s\n",
		len(msgs), orders, len(msgs)-orders-1, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(stdout, "  processed:          %d  (%d rows in orders)\n", processed, rows)
	fmt.Fprintf(stdout, "  duplicates skipped: %d\n", duplicates.Load())
	fmt.Fprintf(stdout, "  dead-lettered:      %d  %s\n", deadLetters, st.deadLetter(ctx))
	if acked != int64(len(msgs)) || rows != processed || processed+duplicates.Load()+deadLetters != acked {
		return fmt.Errorf("the counts do not add up: %d acked, %d processed, %d rows, %d duplicates, %d dead letters",
			acked, processed, rows, duplicates.Load(), deadLetters)
	}
	return nil
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

// store is idem's store with the example's orders table beside it.
type store struct {
	describe string
	store    consumer.Store
	handler  message.NoPublishHandlerFunc
	// counts returns the rows in orders, the events processed, the dead letters.
	counts func(ctx context.Context) (rows, processed, deadLetters int64, err error)
	// deadLetter describes the dead letters.
	deadLetter func(ctx context.Context) string
	close      func()
}

func openStore(ctx context.Context, opts options) (*store, error) {
	if opts.databaseURL != "" {
		return openPostgres(ctx, opts)
	}
	return openSQLite(ctx, opts)
}

func openSQLite(ctx context.Context, opts options) (*store, error) {
	for _, f := range []string{opts.dbPath, opts.dbPath + "-wal", opts.dbPath + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	s, err := sqlite.Open(ctx, opts.dbPath, sqlite.Config{Migrate: true})
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
	return &store{
		describe: "SQLite " + opts.dbPath,
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
			d, err := s.DeadLetter(ctx, consumerName, poisonEvent)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("%s: %s, %d attempt(s)", d.EventID, d.Reason, d.Attempts)
		},
		close: func() { s.Close() },
	}, nil
}

func openPostgres(ctx context.Context, opts options) (*store, error) {
	pool, err := pgxpool.New(ctx, opts.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: opts.schema}); err != nil {
		pool.Close()
		return nil, err
	}
	s, err := postgres.New(pool, postgres.Config{Schema: opts.schema})
	if err != nil {
		pool.Close()
		return nil, err
	}
	q := pgx.Identifier{opts.schema}.Sanitize()
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS " + q + ".orders (order_id text NOT NULL, total_cents bigint NOT NULL)",
		"TRUNCATE " + q + ".processed, " + q + ".attempts, " + q + ".dead_letters, " + q + ".orders",
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			pool.Close()
			return nil, fmt.Errorf("prepare schema %s: %w", opts.schema, err)
		}
	}
	return &store{
		describe: "PostgreSQL, schema " + opts.schema,
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
			d, err := s.DeadLetter(ctx, consumerName, poisonEvent)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("%s: %s, %d attempt(s)", d.EventID, d.Reason, d.Attempts)
		},
		close: pool.Close,
	}, nil
}
