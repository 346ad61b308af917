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
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

// OrderPlacedV1 is the first version of OrderPlaced: a total in cents, in euros.
type OrderPlacedV1 struct {
	OrderID    string `json:"order_id"`
	TotalCents int64  `json:"total_cents"`
}

// OrderPlacedV2 is the current version: the amount got an explicit currency. Renaming
// a field is not a compatible change, hence version 2 and an upcaster from version 1.
type OrderPlacedV2 struct {
	OrderID     string `json:"order_id"`
	AmountMinor int64  `json:"amount_minor"`
	Currency    string `json:"currency"`
}

// Example_versioned handles two versions of one event with one typed handler: version
// 1 is upcast to version 2 before the handler sees it, a redelivery is a duplicate
// whatever its version, and a version this build does not know (from a newer producer)
// is dead-lettered at once rather than misread. Register the handler on a router with
// c.AddConsumerHandler(router, "billing", "orders", subscriber, handler); here each
// call of the wrapped handler stands for one delivery by the broker.
func Example_versioned() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.URL()) // TEST_DATABASE_URL
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	const schema = "idem_example_versioned"
	_, _ = pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE") // left by an interrupted run
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}); err != nil {
		panic(err)
	}
	defer pool.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE") //nolint:errcheck
	if _, err := pool.Exec(ctx, "CREATE TABLE "+schema+".invoices (order_id text PRIMARY KEY, amount_minor bigint, currency text)"); err != nil {
		panic(err)
	}
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		panic(err)
	}
	c, err := consumer.New(consumer.Config{
		Store:  store,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1})),
	})
	if err != nil {
		panic(err)
	}

	handler, err := consumer.VersionedConsumer(consumer.VersionedConfig{
		Events: []consumer.EventHandler{{
			Type:    "OrderPlaced",
			Version: 2,
			Handler: postgres.Handler(func(ctx context.Context, tx pgx.Tx, o OrderPlacedV2) error {
				_, err := tx.Exec(ctx, "INSERT INTO "+schema+".invoices VALUES ($1, $2, $3)", o.OrderID, o.AmountMinor, o.Currency)
				return err
			}),
			Upcasters: []consumer.Upcaster{
				consumer.Upcast(1, func(o OrderPlacedV1) (OrderPlacedV2, error) {
					return OrderPlacedV2{OrderID: o.OrderID, AmountMinor: o.TotalCents, Currency: "EUR"}, nil
				}),
			},
		}},
		// DefaultVersion left at 0: a message without event_version is version 1.
	})
	if err != nil {
		panic(err)
	}
	billing := c.WrapConsumer("billing", handler)

	deliver := func(eventID, version, payload string) {
		msg := message.NewMessage(eventID, []byte(payload))
		msg.Metadata.Set("event_id", eventID)
		msg.Metadata.Set(middleware.EventTypeKey, "OrderPlaced")
		msg.Metadata.Set(middleware.EventVersionKey, version)
		if err := billing(msg); err != nil {
			fmt.Println("nack:", err)
		}
	}
	deliver("evt-1", "1", `{"order_id":"A-1","total_cents":1200}`)
	deliver("evt-1", "1", `{"order_id":"A-1","total_cents":1200}`) // a redelivery
	deliver("evt-2", "2", `{"order_id":"A-2","amount_minor":900,"currency":"USD"}`)
	deliver("evt-3", "3", `{"order_id":"A-3","amount":{"minor":500,"currency":"USD"}}`)

	rows, err := pool.Query(ctx, "SELECT order_id, amount_minor, currency FROM "+schema+".invoices ORDER BY order_id")
	if err != nil {
		panic(err)
	}
	for rows.Next() {
		var id, currency string
		var amount int64
		if err := rows.Scan(&id, &amount, &currency); err != nil {
			panic(err)
		}
		fmt.Printf("invoice %s: %d %s\n", id, amount, currency)
	}
	if err := rows.Err(); err != nil {
		panic(err)
	}
	var letters int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".dead_letters").Scan(&letters); err != nil {
		panic(err)
	}
	fmt.Println("dead letters:", letters)
	d, err := store.DeadLetter(ctx, "billing", "evt-3")
	if err != nil {
		panic(err)
	}
	fmt.Printf("dead letter %s: %s after %d attempt: %s\n", d.EventID, d.Reason, d.Attempts, d.Error)
	// Output:
	// invoice A-1: 1200 EUR
	// invoice A-2: 900 USD
	// dead letters: 1
	// dead letter evt-3: permanent after 1 attempt: OrderPlaced event_version "3": this handler knows versions 1 and 2 only
}
