// Nats runs idem's whole stack on NATS JetStream: a Watermill router consumes a stream
// on file storage through a durable push consumer created up front (as at deploy time)
// and bound to with manual acks, as transports.NATSJetStreamConfig configures them,
// through consumer.New.
//
//	go run ./examples/nats                                         # NATS on localhost, a SQLite file
//	IDEM_DATABASE_URL=postgres://… go run ./examples/nats           # the PostgreSQL store instead
//
// It publishes five OrderPlaced events, two of them twice, and a poison message whose
// payload is not JSON, waits until every message is acknowledged, and prints what
// happened: each order written once, the copies skipped, the poison message
// dead-lettered. The stream (flag -stream) and its durable consumer are created before
// the first publish, and the stream is deleted at the end.
//
// The broker is $IDEM_NATS_URL (flag -nats-url, default nats://127.0.0.1:4222), with
// JetStream enabled.
// With no database configured the store is idem's embedded SQLite store in the file
// idem-nats.db (flag -db), recreated on every run; with IDEM_DATABASE_URL (flag
// -database-url) it is PostgreSQL, in the schema idem_example_nats (flag -schema),
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
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"

	"github.com/idemkit/idem/examples/internal/demo"
	"github.com/idemkit/idem/transports"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nats:", err)
		stop()
		os.Exit(1)
	}
}

type options struct {
	brokerURL string
	stream    string
	store     demo.StoreOptions
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&opts.brokerURL, "nats-url", cmp.Or(os.Getenv("IDEM_NATS_URL"), "nats://127.0.0.1:4222"), "NATS with JetStream at `URL`; defaults to $IDEM_NATS_URL")
	fs.StringVar(&opts.stream, "stream", "idem_example_orders", "the `stream` (and subject) to publish to and consume, deleted at the end")
	demo.AddStoreFlags(fs, &opts.store, "nats")
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

	// The broker: a stream on file storage and the durable consumer that all replicas
	// share, created before the first publish (at deploy time in production), never by
	// a subscriber: nats.go deletes a consumer its own Subscribe created when that
	// subscription ends. transports.NATSJetStreamConfig gives the consumer and the
	// watermill-nats configurations that bind to it with manual acks. The stream is
	// deleted at the end.
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{
		URL:      opts.brokerURL,
		Stream:   opts.stream,
		Consumer: demo.ConsumerName,
	})
	if err != nil {
		return err
	}
	connOpts := []nats.Option{nats.Name("idem-example"), nats.Timeout(5 * time.Second), nats.ReconnectWait(time.Second)}
	n.Subscriber.NatsOptions = append(n.Subscriber.NatsOptions, connOpts...)
	n.Publisher.NatsOptions = append(n.Publisher.NatsOptions, connOpts...)
	admin, err := nats.Connect(opts.brokerURL, connOpts...)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer admin.Close()
	js, err := admin.JetStream()
	if err != nil {
		return err
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: opts.stream, Subjects: []string{opts.stream}, Storage: nats.FileStorage}); err != nil {
		return fmt.Errorf("create stream %s: %w", opts.stream, err)
	}
	defer func() {
		left := "?"
		if info, err := js.ConsumerInfo(opts.stream, demo.ConsumerName); err == nil {
			left = fmt.Sprint(info.NumPending + uint64(info.NumAckPending))
		}
		if cleanupErr := js.DeleteStream(opts.stream); cleanupErr != nil {
			err = errors.Join(err, fmt.Errorf("delete stream %s: %w", opts.stream, cleanupErr))
			return
		}
		fmt.Fprintf(stdout, "stream %s deleted (%s messages unacknowledged)\n", opts.stream, left)
	}()
	if _, err := js.AddConsumer(opts.stream, n.Consumer); err != nil {
		return fmt.Errorf("create durable consumer %s: %w", demo.ConsumerName, err)
	}
	logger := watermill.NopLogger{}
	sub, err := natspub.NewSubscriber(n.Subscriber, logger)
	if err != nil {
		return err
	}
	defer sub.Close()
	pub, err := natspub.NewPublisher(n.Publisher, logger)
	if err != nil {
		return err
	}
	defer pub.Close()

	return demo.Run(ctx, stdout, demo.Broker{
		Title:       "NATS JetStream: stream " + opts.stream,
		System:      "nats",
		Topic:       opts.stream,
		AckDeadline: n.AckDeadline,
		Subscriber:  sub,
		Publisher:   pub,
	}, st)
}
