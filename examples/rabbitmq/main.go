// Rabbitmq runs idem's whole stack on RabbitMQ: a Watermill router consumes a durable
// quorum queue (transports.AMQPQuorumConfig: publisher confirms, and the marshaler fix
// for the x-delivery-count header of redeliveries) through consumer.New.
//
//	go run ./examples/rabbitmq                                         # RabbitMQ on localhost, a SQLite file
//	IDEM_DATABASE_URL=postgres://… go run ./examples/rabbitmq           # the PostgreSQL store instead
//
// It publishes five OrderPlaced events, two of them twice, and a poison message whose
// payload is not JSON, waits until every message is acknowledged, and prints what
// happened: each order written once, the copies skipped, the poison message
// dead-lettered. The queue (flag -queue) is declared before the first publish and
// deleted at the end.
//
// The broker is $IDEM_AMQP_URL (flag -amqp-url, default amqp://guest:guest@127.0.0.1:5672/).
// With no database configured the store is idem's embedded SQLite store in the file
// idem-rabbitmq.db (flag -db), recreated on every run; with IDEM_DATABASE_URL (flag
// -database-url) it is PostgreSQL, in the schema idem_example_rabbitmq (flag -schema),
// migrated if needed and emptied at the start of every run.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/transports"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rabbitmq:", err)
		stop()
		os.Exit(1)
	}
}

// consumerTimeout is RabbitMQ's consumer_timeout (30 minutes by default): the ack
// deadline of a delivery, given to consumer.Config.AckDeadline.
const consumerTimeout = 30 * time.Minute

type options struct {
	brokerURL string
	queue     string
	store     demo.StoreOptions
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("rabbitmq", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&opts.brokerURL, "amqp-url", cmp.Or(os.Getenv("IDEM_AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ at `URL`; defaults to $IDEM_AMQP_URL")
	fs.StringVar(&opts.queue, "queue", "idem_example_orders", "the `queue` to publish to and consume, deleted at the end")
	demo.AddStoreFlags(fs, &opts.store, "rabbitmq")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return opts, opts.store.Validate()
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
	st, err := demo.OpenStore(ctx, opts.store)
	if err != nil {
		return err
	}
	defer st.Close()

	// The broker: a durable quorum queue, declared before the first publish (the
	// default exchange drops messages for a queue that does not exist), deleted at the
	// end.
	cfg := transports.AMQPQuorumConfig(opts.brokerURL)
	cfg.Connection.AmqpConfig = &amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second), Heartbeat: 10 * time.Second, Locale: "en_US"}
	logger := watermill.NopLogger{}
	sub, err := amqp.NewSubscriber(cfg, logger)
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(opts.queue); err != nil {
		return fmt.Errorf("declare queue %s: %w", opts.queue, err)
	}
	defer func() {
		deleted, cleanupErr := deleteQueue(opts.brokerURL, *cfg.Connection.AmqpConfig, opts.queue)
		if cleanupErr != nil {
			err = errors.Join(err, fmt.Errorf("delete queue %s: %w", opts.queue, cleanupErr))
			return
		}
		fmt.Fprintf(stdout, "queue %s deleted (%d messages left in it)\n", opts.queue, deleted)
	}()
	pub, err := amqp.NewPublisher(cfg, logger)
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	defer pub.Close()

	return demo.Run(ctx, stdout, demo.Broker{
		Title:       "RabbitMQ: queue " + opts.queue,
		System:      "rabbitmq",
		Topic:       opts.queue,
		AckDeadline: consumerTimeout,
		Subscriber:  sub,
		Publisher:   pub,
	}, st)
}

// deleteQueue deletes queue and returns how many messages it held.
func deleteQueue(url string, cfg amqp091.Config, queue string) (int, error) {
	conn, err := amqp091.DialConfig(url, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	return ch.QueueDelete(queue, false, false, false)
}
