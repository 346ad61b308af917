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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/examples/internal/demo"
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

// maxIdleTime is the subscriber's MaxIdleTime: a message delivered and not acked for
// that long is claimed by another consumer of the group. It is the ack deadline given
// to consumer.Config.AckDeadline.
const maxIdleTime = 60 * time.Second

type options struct {
	brokerURL string
	stream    string
	store     demo.StoreOptions
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var opts options
	fs := flag.NewFlagSet("redis", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&opts.brokerURL, "redis-url", cmp.Or(os.Getenv("IDEM_REDIS_URL"), "redis://127.0.0.1:6379/0"), "Redis at `URL`; defaults to $IDEM_REDIS_URL")
	fs.StringVar(&opts.stream, "stream", "idem_example_orders", "the `stream` to publish to and consume, deleted at the end")
	demo.AddStoreFlags(fs, &opts.store, "redis")
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
		if p, err := admin.XPending(context.WithoutCancel(ctx), opts.stream, demo.ConsumerName).Result(); err == nil {
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
		ConsumerGroup: demo.ConsumerName, // shared by the replicas
		Consumer:      "replica-1",       // distinct per replica
		MaxIdleTime:   maxIdleTime,       // then another consumer of the group claims it
		OldestId:      "0",               // a group created after the first publish still reads it
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

	return demo.Run(ctx, stdout, demo.Broker{
		Title:       "Redis Streams: stream " + opts.stream,
		System:      "redis",
		Topic:       opts.stream,
		AckDeadline: maxIdleTime,
		Subscriber:  sub,
		Publisher:   pub,
		Drained: func(ctx context.Context) (bool, error) {
			p, err := admin.XPending(ctx, opts.stream, demo.ConsumerName).Result()
			return err == nil && p.Count == 0, err
		},
	}, st)
}
