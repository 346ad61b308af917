package transports_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testbroker"
)

// natsAckWait is the JetStream consumer's AckWait in these tests: the server
// redelivers a message not acked within it.
const natsAckWait = 10 * time.Second

// natsConsumerConfig is the durable JetStream push consumer all replicas share,
// created at deploy time (here: before subscribing), never by a subscriber: nats.go
// deletes a consumer that its Subscribe created when that subscription ends, so the
// first replica to shut down would delete it under the others, and the next start
// would deliver the whole stream again.
func natsConsumerConfig(group string) *nats.ConsumerConfig {
	return &nats.ConsumerConfig{
		Durable:        group,
		DeliverSubject: nats.NewInbox(),
		DeliverGroup:   group,
		DeliverPolicy:  nats.DeliverAllPolicy,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        natsAckWait,
		MaxDeliver:     -1, // idem bounds attempts; a JetStream limit would drop the message silently
	}
}

// natsSubscriberConfig subscribes to the durable consumer of natsConsumerConfig on
// stream, with manual acks.
//
// nats.ManualAck is required: without it nats.go acks each message when watermill-nats'
// callback returns, which it does when AckWaitTimeout passes or the subscriber closes
// while the handler still runs, so a message being retried, or in flight at shutdown,
// is acknowledged without its outcome and lost.
func natsSubscriberConfig(stream, group string) natspub.SubscriberSubscriptionConfig {
	return natspub.SubscriberSubscriptionConfig{
		Unmarshaler:      &natspub.NATSMarshaler{},
		QueueGroupPrefix: group,
		SubscribersCount: 2,
		AckWaitTimeout:   natsAckWait,
		CloseTimeout:     10 * time.Second,
		JetStream: natspub.JetStreamConfig{
			DurablePrefix: group,
			SubscribeOptions: []nats.SubOpt{
				nats.Bind(stream, group),
				nats.ManualAck(),
			},
		},
	}
}

func newNATSBroker(t *testing.T, _ *pgxpool.Pool) *broker {
	t.Helper()
	return natsBroker(t, testbroker.NATSURL(t), func(*nats.ConsumerConfig) {})
}

// natsBroker is a stream of its own on the NATS server at url, with the durable
// consumer of natsConsumerConfig as configure changed it. Its connections reconnect for
// as long as it takes.
func natsBroker(t *testing.T, url string, configure func(*nats.ConsumerConfig)) *broker {
	t.Helper()
	stream := uniqueName("idem_test_")
	const group = "billing"
	connect := func(t *testing.T) *nats.Conn {
		conn, err := nats.Connect(url, nats.Name("idem-test"), nats.Timeout(5*time.Second),
			nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		return conn
	}

	admin := connect(t)
	js, err := admin.JetStream()
	require.NoError(t, err)
	// The stream is durable (file storage), and must exist before the first publish.
	_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{stream}, Storage: nats.FileStorage})
	require.NoError(t, err)
	t.Cleanup(func() { _ = js.DeleteStream(stream) })
	cc := natsConsumerConfig(group)
	configure(cc)
	ackWait := cc.AckWait
	_, err = js.AddConsumer(stream, cc)
	require.NoError(t, err)

	pub, err := natspub.NewPublisherWithNatsConn(connect(t), natspub.PublisherPublishConfig{
		Marshaler:         &natspub.NATSMarshaler{},
		SubjectCalculator: natspub.DefaultSubjectCalculator,
	}, watermill.NopLogger{})
	require.NoError(t, err)

	return &broker{
		system:      "nats",
		topic:       stream,
		ackDeadline: ackWait,
		publisher:   pub,
		subscriber: func(t *testing.T, _ int) message.Subscriber {
			sc := natsSubscriberConfig(stream, group)
			sc.AckWaitTimeout = ackWait
			sub, err := natspub.NewSubscriberWithNatsConn(connect(t), sc, watermill.NopLogger{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Close() })
			return sub
		},
		unfinished: func(ctx context.Context) (string, error) {
			info, err := js.ConsumerInfo(stream, group, nats.Context(ctx))
			if err != nil {
				return "", err
			}
			if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
				return "", nil
			}
			return fmt.Sprintf("%d pending, %d awaiting ack, %d redelivered", info.NumPending, info.NumAckPending, info.NumRedelivered), nil
		},
	}
}

func TestNATSJetStream(t *testing.T) {
	t.Parallel()
	runScenario(t, newNATSBroker)
}

// Two pitfalls of watermill-nats on nats.go that natsSubscriberConfig avoids, shown on
// the server's own counters.
func TestNATSPitfalls(t *testing.T) {
	t.Parallel()
	url := testbroker.NATSURL(t)
	setup := func(t *testing.T) (nats.JetStreamContext, string, message.Publisher) {
		t.Helper()
		conn, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		js, err := conn.JetStream()
		require.NoError(t, err)
		stream := uniqueName("idem_test_")
		_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{stream}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = js.DeleteStream(stream) })
		pub, err := natspub.NewPublisherWithNatsConn(conn, natspub.PublisherPublishConfig{
			Marshaler: &natspub.NATSMarshaler{}, SubjectCalculator: natspub.DefaultSubjectCalculator,
		}, watermill.NopLogger{})
		require.NoError(t, err)
		return js, stream, pub
	}
	subscribe := func(t *testing.T, cfg natspub.SubscriberSubscriptionConfig, stream string) (*natspub.Subscriber, <-chan *message.Message) {
		t.Helper()
		conn, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		sub, err := natspub.NewSubscriberWithNatsConn(conn, cfg, watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = sub.Close() })
		msgs, err := sub.Subscribe(context.Background(), stream)
		require.NoError(t, err)
		return sub, msgs
	}
	receive := func(t *testing.T, msgs <-chan *message.Message) *message.Message {
		t.Helper()
		select {
		case msg := <-msgs:
			return msg
		case <-time.After(10 * time.Second):
			t.Fatal("no message within 10s")
			return nil
		}
	}

	t.Run("WithoutManualAckAnUnfinishedMessageIsAcked", func(t *testing.T) {
		t.Parallel()
		js, stream, pub := setup(t)
		cfg := natspub.SubscriberSubscriptionConfig{
			Unmarshaler:      &natspub.NATSMarshaler{},
			QueueGroupPrefix: "billing",
			AckWaitTimeout:   50 * time.Millisecond, // the handler outlives it
			JetStream:        natspub.JetStreamConfig{DurablePrefix: "billing", SubscribeOptions: []nats.SubOpt{nats.AckExplicit(), nats.AckWait(time.Minute)}},
		}
		_, msgs := subscribe(t, cfg, stream)
		require.NoError(t, pub.Publish(stream, newMessage("evt-1", "a")))
		msg := receive(t, msgs)
		// Still in the handler: watermill-nats gave up waiting, and nats.go acked it.
		require.Eventually(t, func() bool {
			info, err := js.ConsumerInfo(stream, "billing")
			require.NoError(t, err)
			return info.AckFloor.Stream == 1 && info.NumAckPending == 0
		}, 10*time.Second, 10*time.Millisecond, "the message is acknowledged before the handler finished")
		msg.Nack() // the handler fails: too late, the message is gone
		info, err := js.ConsumerInfo(stream, "billing")
		require.NoError(t, err)
		require.Zero(t, info.NumPending+uint64(info.NumAckPending)+uint64(info.NumRedelivered), "nothing left to redeliver")
	})

	t.Run("ASubscriberDeletesTheDurableItCreated", func(t *testing.T) {
		t.Parallel()
		js, stream, _ := setup(t)
		cfg := natspub.SubscriberSubscriptionConfig{
			Unmarshaler:      &natspub.NATSMarshaler{},
			QueueGroupPrefix: "billing",
			JetStream:        natspub.JetStreamConfig{DurablePrefix: "billing", SubscribeOptions: []nats.SubOpt{nats.ManualAck(), nats.AckExplicit()}},
		}
		first, _ := subscribe(t, cfg, stream)
		_, _ = subscribe(t, cfg, stream) // a second replica on the same durable
		_, err := js.ConsumerInfo(stream, "billing")
		require.NoError(t, err)
		require.NoError(t, first.Close()) // the first replica shuts down
		_, err = js.ConsumerInfo(stream, "billing")
		require.ErrorIs(t, err, nats.ErrConsumerNotFound, "the durable, its acks and the second replica's deliveries are gone")
	})

	t.Run("APayloadOverMaxPayloadIsRefused", func(t *testing.T) {
		t.Parallel()
		conn, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		_, stream, pub := setup(t)
		// The server's max_payload (1 MiB unless configured) bounds payload, metadata
		// headers included; the publisher is refused before anything is sent.
		big := newMessage("evt-1", strings.Repeat("x", int(conn.MaxPayload())))
		require.ErrorIs(t, pub.Publish(stream, big), nats.ErrMaxPayload)
	})
}
