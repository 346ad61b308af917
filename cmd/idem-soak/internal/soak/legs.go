package soak

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqppub "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/transports"
)

// The legs: each runs the whole stack on one transport, with PostgreSQL as idem's store.
const (
	LegSQL      = "sql"      // watermill-sql: PostgreSQL as the broker
	LegRabbitMQ = "rabbitmq" // watermill-amqp, a quorum queue (transports.AMQPQuorumConfig)
	LegNATS     = "nats"     // watermill-nats, JetStream (transports.NATSJetStreamConfig)
	LegRedis    = "redis"    // watermill-redisstream, a consumer group
)

// AllLegs lists the legs in the order they run.
var AllLegs = []string{LegSQL, LegRabbitMQ, LegNATS, LegRedis}

// consumerName is the idem consumer (handler) name, and the broker's consumer group.
const consumerName = "billing"

// Ack deadlines of the legs: short, so that a delivery held by a killed consumer comes
// back soon. RabbitMQ has none shorter than its server-wide consumer_timeout, and a
// killed consumer's deliveries come back when its connection closes.
const (
	sqlAckDeadline      = 10 * time.Second
	natsAckWait         = 5 * time.Second
	redisMaxIdle        = 5 * time.Second
	rabbitConsumerLimit = 30 * time.Minute
)

// LegConfig is what the harness and its consumer processes both know of a leg.
type LegConfig struct {
	Leg         string        `json:"leg"`
	DatabaseURL string        `json:"database_url"`
	Schema      string        `json:"schema"` // idem's tables and the soak's
	BrokerURL   string        `json:"broker_url"`
	Topic       string        `json:"topic"`
	AckDeadline time.Duration `json:"ack_deadline"`
	// SQLBatchSize is watermill-sql's SubscribeBatchSize: how many messages one
	// subscriber transaction fetches, handles and commits together.
	SQLBatchSize int `json:"sql_batch_size,omitempty"`
}

func ackDeadline(leg string) time.Duration {
	switch leg {
	case LegSQL:
		return sqlAckDeadline
	case LegNATS:
		return natsAckWait
	case LegRedis:
		return redisMaxIdle
	}
	return rabbitConsumerLimit
}

// messagingSystem is the messaging.system attribute of the leg's spans.
func messagingSystem(leg string) string {
	switch leg {
	case LegSQL:
		return "postgresql"
	case LegNATS:
		return "nats"
	}
	return leg
}

// sqlSchema is watermill-sql's default PostgreSQL schema with payloads as bytes, and
// batch messages per subscriber transaction.
func sqlSchema(batch int) wsql.DefaultPostgreSQLSchema {
	return wsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }, SubscribeBatchSize: batch}
}

func sqlSubscriberConfig(batch int) wsql.SubscriberConfig {
	deadline := sqlAckDeadline
	return wsql.SubscriberConfig{
		ConsumerGroup:  consumerName,
		SchemaAdapter:  sqlSchema(batch),
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   10 * time.Millisecond,
		ResendInterval: 5 * time.Millisecond,
		RetryInterval:  100 * time.Millisecond,
		AckDeadline:    &deadline,
	}
}

func amqpConfig(url string) amqppub.Config {
	cfg := transports.AMQPQuorumConfig(url)
	cfg.Connection.AmqpConfig = &amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Heartbeat: 10 * time.Second, Locale: "en_US"}
	return cfg
}

var natsOptions = []nats.Option{nats.Name("idem-soak"), nats.Timeout(5 * time.Second), nats.ReconnectWait(100 * time.Millisecond)}

func natsConfig(cfg LegConfig) (transports.NATSJetStream, error) {
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{URL: cfg.BrokerURL, Stream: cfg.Topic, Consumer: consumerName, AckWait: natsAckWait})
	if err != nil {
		return n, err
	}
	n.Subscriber.NatsOptions = append(n.Subscriber.NatsOptions, natsOptions...)
	n.Publisher.NatsOptions = append(n.Publisher.NatsOptions, natsOptions...)
	return n, nil
}

func redisClient(url string) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = 5 * time.Second
	return redis.NewClient(opts), nil
}

// newSubscriber returns the subscriber of consumer process instance on cfg's leg;
// pool is the process's pool (watermill-sql consumes through it).
func newSubscriber(cfg LegConfig, instance int, pool *pgxpool.Pool) (message.Subscriber, error) {
	logger := watermill.NopLogger{}
	switch cfg.Leg {
	case LegSQL:
		return wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), sqlSubscriberConfig(cfg.SQLBatchSize), logger)
	case LegRabbitMQ:
		return amqppub.NewSubscriber(amqpConfig(cfg.BrokerURL), logger)
	case LegNATS:
		n, err := natsConfig(cfg)
		if err != nil {
			return nil, err
		}
		return natspub.NewSubscriber(n.Subscriber, logger)
	case LegRedis:
		client, err := redisClient(cfg.BrokerURL)
		if err != nil {
			return nil, err
		}
		return redisstream.NewSubscriber(redisstream.SubscriberConfig{
			Client:        client,
			ConsumerGroup: consumerName,
			Consumer:      fmt.Sprintf("replica-%d", instance), // a restarted replica keeps its name
			MaxIdleTime:   redisMaxIdle,
			ClaimInterval: time.Second,
			OldestId:      "0",
		}, logger)
	}
	return nil, fmt.Errorf("soak: unknown leg %q", cfg.Leg)
}

// broker is the harness's side of a leg's transport: the topic made ready before the
// first publish, a publisher, and what the broker still holds for the consumers.
type broker struct {
	publisher message.Publisher
	// unfinished describes what the broker holds that the consumers have not acked, or
	// returns "" when it holds nothing.
	unfinished func(ctx context.Context) (string, error)
	close      func()
}

// newBroker prepares cfg's topic (tables, queue, stream and durable consumer, or
// stream and group) and returns the harness's side of it; pool is on cfg.DatabaseURL.
func newBroker(ctx context.Context, cfg LegConfig, pool *pgxpool.Pool) (*broker, error) {
	logger := watermill.NopLogger{}
	switch cfg.Leg {
	case LegSQL:
		db := wsql.BeginnerFromPgx(pool)
		init, err := wsql.NewSubscriber(db, sqlSubscriberConfig(cfg.SQLBatchSize), logger)
		if err != nil {
			return nil, err
		}
		if err := init.SubscribeInitialize(cfg.Topic); err != nil {
			return nil, err
		}
		_ = init.Close()
		pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: sqlSchema(cfg.SQLBatchSize)}, logger)
		if err != nil {
			return nil, err
		}
		messages, offsets := sqlSchema(cfg.SQLBatchSize).MessagesTable(cfg.Topic), wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(cfg.Topic)
		return &broker{
			publisher: pub,
			unfinished: func(ctx context.Context) (string, error) {
				var last, acked int64
				err := pool.QueryRow(ctx, `SELECT coalesce((SELECT max("offset") FROM `+messages+`), 0),
					coalesce((SELECT offset_acked FROM `+offsets+` WHERE consumer_group = $1), 0)`, consumerName).Scan(&last, &acked)
				if err != nil || last == acked {
					return "", err
				}
				return fmt.Sprintf("acked up to offset %d of %d", acked, last), nil
			},
			close: func() { _ = pub.Close() },
		}, nil

	case LegRabbitMQ:
		acfg := amqpConfig(cfg.BrokerURL)
		init, err := amqppub.NewSubscriber(acfg, logger)
		if err != nil {
			return nil, err
		}
		if err := init.SubscribeInitialize(cfg.Topic); err != nil {
			_ = init.Close()
			return nil, err
		}
		_ = init.Close()
		// A channel per concurrent publish: with confirms, one channel publishes one
		// message at a time.
		acfg.Publish.ChannelPoolSize = 16
		pub, err := amqppub.NewPublisher(acfg, logger)
		if err != nil {
			return nil, err
		}
		admin := &amqpAdmin{url: cfg.BrokerURL, cfg: *acfg.Connection.AmqpConfig}
		return &broker{
			publisher: pub,
			unfinished: func(context.Context) (string, error) {
				ch, err := admin.channel()
				if err != nil {
					return "", err
				}
				defer ch.Close()
				q, err := ch.QueueDeclarePassive(cfg.Topic, true, false, false, false, nil)
				if err != nil || q.Messages == 0 {
					return "", err
				}
				return fmt.Sprintf("%d messages ready", q.Messages), nil
			},
			close: func() { _ = pub.Close(); admin.close() },
		}, nil

	case LegNATS:
		n, err := natsConfig(cfg)
		if err != nil {
			return nil, err
		}
		admin, err := nats.Connect(cfg.BrokerURL, append(natsOptions, nats.MaxReconnects(-1))...)
		if err != nil {
			return nil, err
		}
		js, err := admin.JetStream()
		if err != nil {
			admin.Close()
			return nil, err
		}
		if _, err := js.AddStream(&nats.StreamConfig{Name: cfg.Topic, Subjects: []string{cfg.Topic}, Storage: nats.FileStorage}); err != nil {
			admin.Close()
			return nil, fmt.Errorf("soak: create stream %s: %w", cfg.Topic, err)
		}
		if _, err := js.AddConsumer(cfg.Topic, n.Consumer); err != nil {
			admin.Close()
			return nil, fmt.Errorf("soak: create durable consumer: %w", err)
		}
		pub, err := natspub.NewPublisher(n.Publisher, logger)
		if err != nil {
			admin.Close()
			return nil, err
		}
		return &broker{
			publisher: pub,
			unfinished: func(ctx context.Context) (string, error) {
				info, err := js.ConsumerInfo(cfg.Topic, consumerName, nats.Context(ctx))
				if err != nil {
					return "", err
				}
				if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
					return "", nil
				}
				return fmt.Sprintf("%d pending, %d awaiting ack, %d redelivered", info.NumPending, info.NumAckPending, info.NumRedelivered), nil
			},
			close: func() { _ = pub.Close(); admin.Close() },
		}, nil

	case LegRedis:
		admin, err := redisClient(cfg.BrokerURL)
		if err != nil {
			return nil, err
		}
		// The group exists before the first publish; it reads from the start anyway.
		if err := admin.XGroupCreateMkStream(ctx, cfg.Topic, consumerName, "0").Err(); err != nil {
			_ = admin.Close()
			return nil, fmt.Errorf("soak: create consumer group: %w", err)
		}
		pubClient, err := redisClient(cfg.BrokerURL)
		if err != nil {
			return nil, err
		}
		pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: pubClient}, logger)
		if err != nil {
			return nil, err
		}
		return &broker{
			publisher: pub,
			unfinished: func(ctx context.Context) (string, error) {
				pending, err := admin.XPending(ctx, cfg.Topic, consumerName).Result()
				if err != nil {
					return "", err
				}
				info, err := admin.XInfoStream(ctx, cfg.Topic).Result()
				if err != nil {
					return "", err
				}
				groups, err := admin.XInfoGroups(ctx, cfg.Topic).Result()
				if err != nil {
					return "", err
				}
				for _, g := range groups {
					if g.Name != consumerName {
						continue
					}
					if pending.Count == 0 && g.LastDeliveredID == info.LastGeneratedID {
						return "", nil
					}
					return fmt.Sprintf("%d pending, last delivered %s of %s", pending.Count, g.LastDeliveredID, info.LastGeneratedID), nil
				}
				return "", fmt.Errorf("soak: no consumer group %s on stream %s", consumerName, cfg.Topic)
			},
			close: func() { _ = pub.Close(); _ = admin.Close() },
		}, nil
	}
	return nil, fmt.Errorf("soak: unknown leg %q", cfg.Leg)
}

// amqpAdmin is a connection for inspecting the queue, dialled again once the server
// closed it. It is safe for concurrent use.
type amqpAdmin struct {
	url  string
	cfg  amqp.Config
	mu   sync.Mutex
	conn *amqp.Connection
}

func (a *amqpAdmin) channel() (*amqp.Channel, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn == nil || a.conn.IsClosed() {
		conn, err := amqp.DialConfig(a.url, a.cfg)
		if err != nil {
			return nil, err
		}
		a.conn = conn
	}
	return a.conn.Channel()
}

func (a *amqpAdmin) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn != nil {
		_ = a.conn.Close()
	}
}
