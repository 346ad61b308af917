// Nats runs idem's whole stack on NATS JetStream: a Watermill router consumes a stream
// on file storage through a durable push consumer created up front (as at deploy time)
// and bound to with nats.Bind and nats.ManualAck, through consumer.New.
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

// ackWait is the durable consumer's AckWait: the server redelivers a message not acked
// within it. It is the ack deadline given to consumer.Config.AckDeadline, and
// watermill-nats' AckWaitTimeout.
const ackWait = 30 * time.Second

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

	// The broker: a stream on file storage and a durable consumer shared by all
	// replicas, created before the first publish (at deploy time in production), never
	// by a subscriber: nats.go deletes a consumer its own Subscribe created when that
	// subscription ends. The stream is deleted at the end.
	connect := func() (*nats.Conn, error) {
		conn, err := nats.Connect(opts.brokerURL, nats.Name("idem-example"), nats.Timeout(5*time.Second),
			nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("connect to NATS: %w", err)
		}
		return conn, nil
	}
	admin, err := connect()
	if err != nil {
		return err
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
	if _, err := js.AddConsumer(opts.stream, &nats.ConsumerConfig{
		Durable:        demo.ConsumerName,
		DeliverSubject: nats.NewInbox(),
		DeliverGroup:   demo.ConsumerName,
		DeliverPolicy:  nats.DeliverAllPolicy,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        ackWait,
		MaxDeliver:     -1, // idem bounds attempts; a JetStream limit would drop messages silently
	}); err != nil {
		return fmt.Errorf("create durable consumer %s: %w", demo.ConsumerName, err)
	}
	logger := watermill.NopLogger{}
	subConn, err := connect()
	if err != nil {
		return err
	}
	sub, err := natspub.NewSubscriberWithNatsConn(subConn, natspub.SubscriberSubscriptionConfig{
		Unmarshaler:      &natspub.NATSMarshaler{},
		QueueGroupPrefix: demo.ConsumerName,
		AckWaitTimeout:   ackWait,
		CloseTimeout:     10 * time.Second,
		JetStream: natspub.JetStreamConfig{
			DurablePrefix: demo.ConsumerName,
			// ManualAck: without it nats.go acks a message when watermill-nats gives up
			// waiting for the handler, outcome or not.
			SubscribeOptions: []nats.SubOpt{nats.Bind(opts.stream, demo.ConsumerName), nats.ManualAck()},
		},
	}, logger)
	if err != nil {
		subConn.Close()
		return err
	}
	defer sub.Close() // closes subConn
	pubConn, err := connect()
	if err != nil {
		return err
	}
	pub, err := natspub.NewPublisherWithNatsConn(pubConn, natspub.PublisherPublishConfig{
		Marshaler:         &natspub.NATSMarshaler{},
		SubjectCalculator: natspub.DefaultSubjectCalculator,
	}, logger)
	if err != nil {
		pubConn.Close()
		return err
	}
	defer pub.Close() // closes pubConn

	return demo.Run(ctx, stdout, demo.Broker{
		Title:       "NATS JetStream: stream " + opts.stream,
		System:      "nats",
		Topic:       opts.stream,
		AckDeadline: ackWait,
		Subscriber:  sub,
		Publisher:   pub,
	}, st)
}
