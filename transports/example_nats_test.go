package transports_test

import (
	"context"
	"fmt"
	"os"

	"github.com/ThreeDotsLabs/watermill"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/transports"
)

// ExampleNATSJetStreamConfig shows the durable consumer the replicas share, the ack
// deadline that goes to idem, and a name NATS would refuse.
func ExampleNATSJetStreamConfig() {
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{
		URL:      "nats://127.0.0.1:4222",
		Stream:   "orders",
		Consumer: "billing",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// At deploy time: js.AddConsumer("orders", n.Consumer).
	fmt.Println(n.Consumer.Durable, n.Consumer.DeliverGroup, n.Consumer.AckPolicy, n.Consumer.AckWait, n.Consumer.MaxDeliver)
	// In each replica: natspub.NewSubscriber(n.Subscriber, logger), and
	// consumer.Config{AckDeadline: n.AckDeadline}.
	fmt.Println(n.Subscriber.QueueGroupPrefix, n.Subscriber.JetStream.AckAsync, n.Subscriber.AckWaitTimeout, n.AckDeadline)

	_, err = transports.NATSJetStreamConfig(transports.NATSConfig{Stream: "orders.eu", Consumer: "billing"})
	fmt.Println(err)
	// Output:
	// billing billing AckExplicit 30s -1
	// billing false 30s 30s
	// transports: NATSConfig.Stream "orders.eu" must not contain '.'
}

// ExampleNATSJetStreamConfig_replica creates the stream and the durable consumer of the
// idem consumer "billing" (at deploy time in production), and runs one replica on it.
// It needs a NATS server with JetStream and a PostgreSQL database migrated for idem, so
// it is compiled but not run.
func ExampleNATSJetStreamConfig_replica() {
	ctx := context.Background()
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{
		URL:      os.Getenv("NATS_URL"),
		Stream:   "orders",
		Consumer: "billing",
	})
	if err != nil {
		panic(err)
	}

	// Deploy time: a stream on file storage, and the durable consumer.
	admin, err := nats.Connect(n.Subscriber.URL, n.Subscriber.NatsOptions...)
	if err != nil {
		panic(err)
	}
	defer admin.Close()
	js, err := admin.JetStream()
	if err != nil {
		panic(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "orders", Subjects: []string{"orders"}, Storage: nats.FileStorage}); err != nil {
		panic(err)
	}
	if _, err := js.AddConsumer("orders", n.Consumer); err != nil {
		panic(err)
	}

	// Each replica binds to it.
	sub, err := natspub.NewSubscriber(n.Subscriber, watermill.NopLogger{})
	if err != nil {
		panic(err)
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		panic(err)
	}
	c, err := consumer.New(consumer.Config{Store: store, AckDeadline: n.AckDeadline, MessagingSystem: "nats"})
	if err != nil {
		panic(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		panic(err)
	}
	c.AddConsumerHandler(router, "billing", "orders", sub, func(msg *message.Message) error {
		tx, ok := postgres.TxFromContext(msg.Context())
		if !ok {
			return postgres.ErrNoTx
		}
		_, err := tx.Exec(msg.Context(), "INSERT INTO invoices (event_id) VALUES ($1)", msg.Metadata.Get("event_id"))
		return err
	})
	if err := router.Run(ctx); err != nil {
		panic(err)
	}
}
