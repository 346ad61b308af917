package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	TotalCents int64  `json:"total_cents"`
}

// Example wraps a typed handler that writes through the transaction idem gives it.
// The same event delivered twice takes effect once; an order that fails validation
// is dead-lettered at once. In a service, register the handler on a Watermill router
// with c.AddConsumerHandler(router, "billing", "orders", subscriber, handler); here
// each call of the wrapped handler stands for one delivery by the broker.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.URL()) // TEST_DATABASE_URL
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	_, _ = pool.Exec(ctx, "DROP SCHEMA IF EXISTS idem_example CASCADE") // left by an interrupted run
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: "idem_example"}); err != nil {
		panic(err)
	}
	defer pool.Exec(ctx, "DROP SCHEMA idem_example CASCADE") //nolint:errcheck
	if _, err := pool.Exec(ctx, "CREATE TABLE idem_example.invoices (order_id text PRIMARY KEY, total_cents bigint)"); err != nil {
		panic(err)
	}

	store, err := postgres.New(pool, postgres.Config{Schema: "idem_example"})
	if err != nil {
		panic(err)
	}
	defer store.Close() // the crash guard's liveness connection, when it opened one
	c, err := consumer.New(consumer.Config{
		Store:  store,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1})),
	})
	if err != nil {
		panic(err)
	}
	billing := c.WrapConsumer("billing", postgres.Handler(func(ctx context.Context, tx pgx.Tx, o OrderPlaced) error {
		if o.TotalCents < 0 {
			return retry.Permanent(fmt.Errorf("order %s: negative total", o.OrderID))
		}
		_, err := tx.Exec(ctx, "INSERT INTO idem_example.invoices VALUES ($1, $2)", o.OrderID, o.TotalCents)
		return err
	}))

	deliver := func(eventID, payload string) {
		msg := message.NewMessage(eventID, []byte(payload))
		msg.Metadata.Set("event_id", eventID)
		if err := billing(msg); err != nil {
			fmt.Println("nack:", err)
		}
	}
	deliver("evt-1", `{"order_id":"A-1","total_cents":1200}`)
	deliver("evt-1", `{"order_id":"A-1","total_cents":1200}`) // a redelivery
	deliver("evt-2", `{"order_id":"A-2","total_cents":-5}`)

	var invoices int
	_ = pool.QueryRow(ctx, "SELECT count(*) FROM idem_example.invoices").Scan(&invoices)
	fmt.Println("invoices:", invoices)
	d, err := store.DeadLetter(ctx, "billing", "evt-2")
	if err != nil {
		panic(err)
	}
	fmt.Printf("dead letter: %s after %d attempt: %s\n", d.Reason, d.Attempts, d.Error)
	// Output:
	// invoices: 1
	// dead letter: permanent after 1 attempt: order A-2: negative total
}
