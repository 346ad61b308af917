package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqppub "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// envPublishURL names the environment variable --publish-url defaults to.
const envPublishURL = "IDEM_PUBLISH_URL"

// publishTarget is where replay republishes: a broker URL, checked but not connected.
type publishTarget struct {
	scheme string // postgres, amqp, nats or redis
	raw    string // as given: never print it
	shown  string // as redactURL prints it
}

// publishTarget returns the target of --publish-url, $IDEM_PUBLISH_URL or, on
// PostgreSQL, the database URL.
func (e *env) publishTarget(flagURL string) (publishTarget, error) {
	raw := flagURL
	if raw == "" {
		raw = e.cli.getenv(envPublishURL)
	}
	if raw == "" {
		if e.sqlitePath != "" {
			return publishTarget{}, usageErrorf(e.cmd, "no publish URL: on a SQLite database, set --publish-url or $%s to the broker the consumers read (postgres://, amqp://, nats:// or redis://)", envPublishURL)
		}
		raw = e.dbURL
	}
	e.cli.secrets = append(e.cli.secrets, urlSecrets(raw)...)
	if _, err := url.Parse(raw); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error holds the whole URL, password included
		}
		return publishTarget{}, usageErrorf(e.cmd, "the publish URL is not a valid URL: %v", err)
	}
	scheme, _, _ := strings.Cut(raw, "://")
	t := publishTarget{raw: raw, shown: redactURL(raw)}
	switch scheme {
	case "postgres", "postgresql":
		t.scheme = "postgres"
	case "amqp", "amqps":
		t.scheme = "amqp"
	case "nats", "tls":
		t.scheme = "nats"
	case "redis", "rediss":
		t.scheme = "redis"
	default:
		return publishTarget{}, usageErrorf(e.cmd, "unsupported publish URL %s: use postgres:// (watermill-sql), amqp:// (RabbitMQ), nats:// (NATS JetStream) or redis:// (Redis Streams)", t.shown)
	}
	return t, nil
}

// publisher is a connected Watermill publisher.
type publisher struct {
	message.Publisher
	// ready checks that topic exists on the broker, so that a replayed message is
	// not dropped for want of a queue, stream or table.
	ready func(ctx context.Context, topic string) error
	close func()
}

// publishError is a failure on the publishing side: exit code 1, whatever its cause,
// since the store itself was reached.
func publishError(err error) error { return &exitError{code: exitFailure, err: err} }

// publisher connects to the target.
func (e *env) publisher(ctx context.Context, t publishTarget) (*publisher, error) {
	timeout := e.cli.connectTimeout
	logger := watermill.NopLogger{}
	switch t.scheme {
	case "postgres":
		pool, err := e.connectTo(ctx, "publish", t.raw, t.shown)
		if err != nil {
			var ee *exitError
			if errors.As(err, &ee) && ee.code == exitUnreachable {
				return nil, publishError(ee.err)
			}
			return nil, err
		}
		schema := wsql.DefaultPostgreSQLSchema{}
		pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: schema}, logger)
		if err != nil {
			pool.Close()
			return nil, publishError(fmt.Errorf("watermill-sql publisher on %s: %w", t.shown, err))
		}
		return &publisher{
			Publisher: pub,
			ready: func(ctx context.Context, topic string) error {
				table := schema.MessagesTable(topic)
				var exists bool
				if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil {
					return fmt.Errorf("look for the topic table %s: %w", table, err)
				}
				if !exists {
					return fmt.Errorf("the topic table %s does not exist in %s: no watermill-sql subscriber reads topic %q there (check the URL and its search_path)", table, t.shown, topic)
				}
				return nil
			},
			close: func() { _ = pub.Close(); pool.Close() },
		}, nil
	case "amqp":
		cfg := amqppub.NewDurableQueueConfig(t.raw)
		cfg.Connection.AmqpConfig = &amqp.Config{Dial: amqp.DefaultDial(timeout), Heartbeat: 10 * time.Second, Locale: "en_US"}
		cfg.Publish.ConfirmDelivery = true
		pub, err := amqppub.NewPublisher(cfg, logger)
		if err != nil {
			return nil, publishError(fmt.Errorf("cannot connect to %s: %w", t.shown, err))
		}
		return &publisher{
			Publisher: pub,
			ready: func(_ context.Context, topic string) error {
				ch, err := pub.Connection().Channel()
				if err != nil {
					return fmt.Errorf("open a channel on %s: %w", t.shown, err)
				}
				defer ch.Close()
				if _, err := ch.QueueDeclarePassive(topic, true, false, false, false, nil); err != nil {
					return fmt.Errorf("queue %q on %s: %w: nothing would receive the replayed messages", topic, t.shown, err)
				}
				return nil
			},
			close: func() { _ = pub.Close() },
		}, nil
	case "nats":
		conn, err := nats.Connect(t.raw, nats.Name("idem"), nats.Timeout(timeout), nats.MaxReconnects(0))
		if err != nil {
			return nil, publishError(fmt.Errorf("cannot connect to %s: %w", t.shown, err))
		}
		js, err := conn.JetStream()
		if err != nil {
			conn.Close()
			return nil, publishError(fmt.Errorf("JetStream on %s: %w", t.shown, err))
		}
		pub, err := natspub.NewPublisherWithNatsConn(conn, natspub.PublisherPublishConfig{
			Marshaler:         &natspub.NATSMarshaler{},
			SubjectCalculator: natspub.DefaultSubjectCalculator,
		}, logger)
		if err != nil {
			conn.Close()
			return nil, publishError(fmt.Errorf("NATS publisher on %s: %w", t.shown, err))
		}
		return &publisher{
			Publisher: pub,
			ready: func(ctx context.Context, topic string) error {
				if _, err := js.StreamNameBySubject(topic, nats.Context(ctx)); err != nil {
					return fmt.Errorf("no JetStream stream holds subject %q on %s: %w", topic, t.shown, err)
				}
				return nil
			},
			close: func() { _ = pub.Close(); conn.Close() },
		}, nil
	default: // redis
		opts, err := redis.ParseURL(t.raw)
		if err != nil {
			return nil, usageErrorf(e.cmd, "bad publish URL %s: %v", t.shown, strings.ReplaceAll(err.Error(), t.raw, t.shown))
		}
		opts.DialTimeout = timeout
		client := redis.NewClient(opts)
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := client.Ping(pctx).Err(); err != nil {
			_ = client.Close()
			return nil, publishError(fmt.Errorf("cannot connect to %s: %w", t.shown, err))
		}
		pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: client}, logger)
		if err != nil {
			_ = client.Close()
			return nil, publishError(fmt.Errorf("Redis Streams publisher on %s: %w", t.shown, err))
		}
		return &publisher{
			Publisher: pub,
			ready: func(ctx context.Context, topic string) error {
				n, err := client.Exists(ctx, topic).Result()
				if err != nil {
					return fmt.Errorf("look for stream %q on %s: %w", topic, t.shown, err)
				}
				if n == 0 {
					return fmt.Errorf("stream %q does not exist on %s: no consumer group reads it", topic, t.shown)
				}
				return nil
			},
			close: func() { _ = pub.Close(); _ = client.Close() },
		}, nil
	}
}
