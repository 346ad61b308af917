package transports_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqppub "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/transports"
)

// rabbitConsumerTimeout is RabbitMQ's default consumer_timeout: a delivery not acked
// within it closes the consumer's channel, and the message goes back to the queue.
const rabbitConsumerTimeout = 30 * time.Minute

// amqpConfig is transports.AMQPQuorumConfig with a dial timeout.
func amqpConfig(url string) amqppub.Config {
	cfg := transports.AMQPQuorumConfig(url)
	cfg.Connection.AmqpConfig = &amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Heartbeat: 10 * time.Second, Locale: "en_US"}
	return cfg
}

func newAMQPBroker(t *testing.T, _ *pgxpool.Pool) *broker {
	t.Helper()
	return amqpBroker(t, testbroker.AMQPURL(t))
}

// amqpBroker is a quorum queue of its own on the RabbitMQ at url, declared before the
// first publish. Its subscribers and publisher reconnect by themselves, and so does its
// inspection of the queue.
func amqpBroker(t *testing.T, url string) *broker {
	t.Helper()
	queue := uniqueName("idem_test_")
	cfg := amqpConfig(url)

	admin := &amqpAdmin{url: url, cfg: *cfg.Connection.AmqpConfig}
	t.Cleanup(func() {
		if ch, err := admin.channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_ = ch.Close()
		}
		admin.close()
	})

	pub, err := amqppub.NewPublisher(cfg, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })

	br := &broker{
		system:      "rabbitmq",
		topic:       queue,
		ackDeadline: rabbitConsumerTimeout,
		publisher:   pub,
		subscriber: func(t *testing.T, _ int) message.Subscriber {
			sub, err := amqppub.NewSubscriber(cfg, watermill.NopLogger{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Close() })
			return sub
		},
		unfinished: func(context.Context) (string, error) {
			ch, err := admin.channel()
			if err != nil {
				return "", err
			}
			defer ch.Close()
			q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
			if err != nil {
				return "", err
			}
			if q.Messages == 0 {
				return "", nil
			}
			return fmt.Sprintf("%d messages ready", q.Messages), nil
		},
	}
	// The queue must exist before the first publish: the default exchange drops (and
	// confirms) messages for a queue that does not exist.
	sub, err := amqppub.NewSubscriber(cfg, watermill.NopLogger{})
	require.NoError(t, err)
	require.NoError(t, sub.SubscribeInitialize(queue))
	require.NoError(t, sub.Close())
	return br
}

// amqpAdmin is a connection for inspecting and deleting queues, dialled again once the
// server closed it. It is safe for concurrent use.
type amqpAdmin struct {
	url  string
	cfg  amqp.Config
	mu   sync.Mutex
	conn *amqp.Connection
}

// channel opens a channel, on a new connection if there is none or it was closed.
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

func TestRabbitMQ(t *testing.T) {
	t.Parallel()
	runScenario(t, newAMQPBroker)
}

// A quorum queue marks each redelivery with an integer x-delivery-count header, which
// watermill-amqp's DefaultMarshaler refuses: without transports.AMQPStringHeaders
// (AMQPQuorumConfig's marshaler) the message loops between the broker and the
// subscriber and never reaches idem.
func TestRabbitMQQuorumRedeliveryHeader(t *testing.T) {
	t.Parallel()
	br := newAMQPBroker(t, nil)
	require.NoError(t, br.publisher.Publish(br.topic, newMessage("evt-1", "a")))

	conn, err := amqp.Dial(testbroker.AMQPURL(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Qos(1, 0, false))
	deliveries, err := ch.Consume(br.topic, "", false, false, false, false, nil)
	require.NoError(t, err)
	next := func() amqp.Delivery {
		select {
		case d := <-deliveries:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery within 10s")
			return amqp.Delivery{}
		}
	}
	first := next()
	_, err = amqppub.DefaultMarshaler{}.Unmarshal(first)
	require.NoError(t, err, "a first delivery unmarshals")
	require.NoError(t, first.Nack(false, true))

	again := next()
	require.True(t, again.Redelivered)
	require.IsType(t, int64(0), again.Headers["x-delivery-count"])
	_, err = amqppub.DefaultMarshaler{}.Unmarshal(again)
	require.ErrorContains(t, err, "x-delivery-count", "the default marshaler fails on the redelivery")

	msg, err := amqpConfig("").Marshaler.Unmarshal(again)
	require.NoError(t, err)
	require.Equal(t, "evt-1", msg.Metadata.Get("event_id"))
	require.Equal(t, "1", msg.Metadata.Get("x-delivery-count"))
	require.NoError(t, again.Ack(false))
}
