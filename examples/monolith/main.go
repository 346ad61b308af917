// Monolith shows idem in a modular monolith: modules talk through past-tense domain
// events on an in-process bus, with no broker and no database server, and the same
// handlers move to a broker later by changing two constructors, the pub/sub's and the
// store's:
//
//	go run ./examples/monolith                                            # gochannel + a SQLite file
//	IDEM_DATABASE_URL=postgres://… go run ./examples/monolith -backend sql # watermill-sql + PostgreSQL
//
// Read it in this order:
//
//   - main.go (this file): the walkthrough. run builds the bus and the store, registers
//     each module's handler with idem, places the orders and prints what happened.
//   - events.go: the events, past tense, and the metadata every message carries.
//   - modules.go: the four modules and their handlers, which see the database only as
//     a Tx.
//   - bus.go and store.go: the two constructors that differ between deployments.
//   - tally.go, report.go and flags.go: the demo's plumbing: counting deliveries,
//     reading the outcome back from the database, the command line.
//
// Four modules share the process and one database, each with tables of its own:
//
//   - orders places an order in its orders table inside a transaction, commits, and
//     then publishes OrderPlaced (version 1).
//   - payments reacts to OrderPlaced: it records the payment through the transaction
//     idem gives it and returns PaymentCaptured, which idem publishes inside the
//     attempt.
//   - notifications reacts to OrderPlaced too, independently: its handler name is its
//     own dedup scope, so one event is applied once by payments and once by
//     notifications.
//   - shipping reacts to PaymentCaptured.
//
// What goes wrong: the OrderPlaced of one order is published twice (a publish retried
// after a timeout, when the first had gone through), and every consumer skips the
// copy; a newer build of orders, half-way through a rolling deploy, publishes an
// OrderPlaced version 2 that today's typed handlers do not know, and idem's version
// dispatch in front of each (consumer.Versioned) dead-letters it as permanent rather
// than misreading it. docs/events.md tells how events evolve.
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
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/retry"
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
	h, err := newHandlers(st)
	if err != nil {
		return err
	}
	handled := newTally()
	router.AddMiddleware(handled.middleware) // outermost: sees each delivery's final result
	c.AddHandler(router, payments, t.orderPlaced, b.subs[payments], t.paymentCaptured, handled.publisher(b.pub), h.payments)
	c.AddConsumerHandler(router, notifications, t.orderPlaced, b.subs[notifications], h.notifications)
	c.AddConsumerHandler(router, shipping, t.paymentCaptured, b.subs[shipping], h.shipping)

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
