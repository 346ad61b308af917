package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/sqlite"
)

// Example processes the same message twice, as an at-least-once broker may deliver
// it: the second delivery is a duplicate, and the effect is applied once.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "idem-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	store, err := sqlite.Open(ctx, filepath.Join(dir, "idem.db"), sqlite.Config{Migrate: true})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	// The application's own table.
	if _, err := store.DB().ExecContext(ctx, "CREATE TABLE greetings (name TEXT NOT NULL)"); err != nil {
		log.Fatal(err)
	}

	c, err := consumer.New(consumer.Config{Store: store})
	if err != nil {
		log.Fatal(err)
	}
	handler := c.WrapConsumer("greeter", sqlite.Handler(func(ctx context.Context, tx *sql.Tx, e struct{ Name string }) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO greetings (name) VALUES (?1)", e.Name)
		return err
	}))

	msg := message.NewMessage("0b6f2a4e-5f63-4a1e-9d0e-1c1f7d0f9a11", []byte(`{"Name":"Ada"}`))
	msg.Metadata.Set("event_id", "greeting-1")
	for range 2 { // delivered twice
		if err := handler(msg.Copy()); err != nil {
			log.Fatal(err)
		}
	}

	var applied int
	if err := store.DB().QueryRowContext(ctx, "SELECT count(*) FROM greetings").Scan(&applied); err != nil {
		log.Fatal(err)
	}
	fmt.Println("effect applied:", applied)
	// Output: effect applied: 1
}
