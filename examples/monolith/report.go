package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// The report: what happened, read back from the database once it settled.

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
	p.line("          the event; outbox.PublishTx, in the same transaction, closes this gap")
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
