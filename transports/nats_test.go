package transports_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	natspub "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/internal/testbroker"
	"github.com/idemkit/idem/transports"
)

// natsAckWait is the JetStream consumer's AckWait in these tests: the server
// redelivers a message not acked within it.
const natsAckWait = 10 * time.Second

// natsJetStream is transports.NATSJetStreamConfig for the durable consumer "billing" on
// stream, with two subscriptions per replica.
func natsJetStream(t *testing.T, url, stream string, ackWait time.Duration) transports.NATSJetStream {
	t.Helper()
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{
		URL:              url,
		Stream:           stream,
		Consumer:         "billing",
		AckWait:          ackWait,
		SubscribersCount: 2,
	})
	require.NoError(t, err)
	return n
}

// natsOptions are the test connections' options beyond the helper's: a name, a dial
// timeout, and reconnect attempts close together.
var natsOptions = []nats.Option{nats.Name("idem-test"), nats.Timeout(5 * time.Second), nats.ReconnectWait(50 * time.Millisecond)}

func newNATSBroker(t *testing.T, _ *pgxpool.Pool) *broker {
	t.Helper()
	return natsBroker(t, testbroker.NATSURL(t), natsAckWait, func(*nats.ConsumerConfig) {})
}

// natsBroker is a stream of its own on the NATS server at url, with the durable
// consumer of transports.NATSJetStreamConfig, as configure changed it, created before
// the first publish (as at deploy time). Its connections reconnect for as long as it
// takes.
func natsBroker(t *testing.T, url string, ackWait time.Duration, configure func(*nats.ConsumerConfig)) *broker {
	t.Helper()
	stream := uniqueName("idem_test_")
	n := natsJetStream(t, url, stream, ackWait)
	n.Subscriber.NatsOptions = append(n.Subscriber.NatsOptions, natsOptions...)
	n.Publisher.NatsOptions = append(n.Publisher.NatsOptions, natsOptions...)

	admin, err := nats.Connect(url, append(natsOptions, nats.MaxReconnects(-1))...)
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	js, err := admin.JetStream()
	require.NoError(t, err)
	// The stream is durable (file storage), and must exist before the first publish.
	_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{stream}, Storage: nats.FileStorage})
	require.NoError(t, err)
	t.Cleanup(func() { _ = js.DeleteStream(stream) })
	configure(n.Consumer)
	_, err = js.AddConsumer(stream, n.Consumer)
	require.NoError(t, err)
	durable := n.Consumer.Durable

	pub, err := natspub.NewPublisher(n.Publisher, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pub.Close() })

	return &broker{
		system:      "nats",
		topic:       stream,
		ackDeadline: n.AckDeadline,
		publisher:   pub,
		subscriber: func(t *testing.T, _ int) message.Subscriber {
			sub, err := natspub.NewSubscriber(n.Subscriber, watermill.NopLogger{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Close() })
			return sub
		},
		unfinished: func(ctx context.Context) (string, error) {
			info, err := js.ConsumerInfo(stream, durable, nats.Context(ctx))
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

// Pitfalls of watermill-nats on nats.go that transports.NATSJetStreamConfig avoids, and
// a limit, shown on the server's own counters.
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

func TestNATSJetStreamConfigValidation(t *testing.T) {
	t.Parallel()
	valid := transports.NATSConfig{Stream: "orders", Consumer: "billing"}
	for _, tc := range []struct {
		name    string
		change  func(c *transports.NATSConfig)
		wantErr string
	}{
		{"NoStream", func(c *transports.NATSConfig) { c.Stream = "" }, "transports: NATSConfig.Stream is required"},
		{"NoConsumer", func(c *transports.NATSConfig) { c.Consumer = "" }, "transports: NATSConfig.Consumer is required"},
		{"DotInStream", func(c *transports.NATSConfig) { c.Stream = "orders.v1" }, `NATSConfig.Stream "orders.v1" must not contain '.'`},
		{"StarInConsumer", func(c *transports.NATSConfig) { c.Consumer = "billing*" }, `NATSConfig.Consumer "billing*" must not contain '*'`},
		{"GreaterThanInConsumer", func(c *transports.NATSConfig) { c.Consumer = "a>b" }, `NATSConfig.Consumer "a>b" must not contain '>'`},
		{"SlashInStream", func(c *transports.NATSConfig) { c.Stream = "orders/eu" }, `NATSConfig.Stream "orders/eu" must not contain '/'`},
		{"SpaceInStream", func(c *transports.NATSConfig) { c.Stream = "my orders" }, `NATSConfig.Stream "my orders" must not contain whitespace`},
		{"TabInConsumer", func(c *transports.NATSConfig) { c.Consumer = "billing\t" }, `NATSConfig.Consumer "billing\t" must not contain whitespace`},
		{"NULInConsumer", func(c *transports.NATSConfig) { c.Consumer = "billing\x00" }, `NATSConfig.Consumer "billing\x00" must not contain whitespace or control characters`},
		{"EmptySubjectToken", func(c *transports.NATSConfig) { c.Subject = "orders..placed" }, `NATSConfig.Subject "orders..placed" has an empty token`},
		{"TrailingDotInSubject", func(c *transports.NATSConfig) { c.Subject = "orders." }, `NATSConfig.Subject "orders." has an empty token`},
		{"GreaterThanInsideSubject", func(c *transports.NATSConfig) { c.Subject = "orders.>.placed" }, `NATSConfig.Subject "orders.>.placed" has '>' before its last token`},
		{"WildcardInsideToken", func(c *transports.NATSConfig) { c.Subject = "orders.pl*" }, `NATSConfig.Subject "orders.pl*" has a wildcard inside a token`},
		{"SpaceInSubject", func(c *transports.NATSConfig) { c.Subject = "orders placed" }, `NATSConfig.Subject "orders placed" must not contain whitespace`},
		{"NegativeAckWait", func(c *transports.NATSConfig) { c.AckWait = -time.Second }, "transports: NATSConfig.AckWait must not be negative, got -1s"},
		{"NegativeSubscribersCount", func(c *transports.NATSConfig) { c.SubscribersCount = -1 }, "transports: NATSConfig.SubscribersCount must not be negative, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid
			tc.change(&cfg)
			_, err := transports.NATSJetStreamConfig(cfg)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	for _, subject := range []string{"orders", "orders.*", "orders.>", "*.placed", ">"} {
		cfg := valid
		cfg.Subject = subject
		_, err := transports.NATSJetStreamConfig(cfg)
		require.NoError(t, err, "subject %q", subject)
	}
}

// The defaults, and the ack deadline idem's retry budget is checked against.
func TestNATSJetStreamConfigDefaults(t *testing.T) {
	t.Parallel()
	n, err := transports.NATSJetStreamConfig(transports.NATSConfig{Stream: "orders", Consumer: "billing", Subject: "orders.placed"})
	require.NoError(t, err)

	require.Equal(t, &nats.ConsumerConfig{
		Durable:        "billing",
		DeliverSubject: "_INBOX.idem.orders.billing",
		DeliverGroup:   "billing",
		DeliverPolicy:  nats.DeliverAllPolicy,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        transports.DefaultNATSAckWait,
		MaxDeliver:     -1,
		FilterSubject:  "orders.placed",
		ReplayPolicy:   nats.ReplayInstantPolicy,
	}, n.Consumer)
	require.Equal(t, transports.DefaultNATSAckWait, n.AckDeadline)

	sub := n.Subscriber
	require.Equal(t, nats.DefaultURL, sub.URL)
	require.Equal(t, "billing", sub.QueueGroupPrefix)
	require.Equal(t, "billing", sub.JetStream.DurablePrefix)
	require.Equal(t, 1, sub.SubscribersCount)
	require.Equal(t, transports.DefaultNATSAckWait, sub.AckWaitTimeout)
	require.False(t, sub.JetStream.AckAsync, "acks wait for the server's confirmation")
	require.False(t, sub.JetStream.AutoProvision)
	require.Nil(t, sub.NakDelay)
	require.Len(t, sub.JetStream.SubscribeOptions, 4) // Bind, ManualAck, AckExplicit, AckWait: tested on a server
	require.Len(t, sub.NatsOptions, 1)                // MaxReconnects(-1)
	var opts nats.Options
	require.NoError(t, sub.NatsOptions[0](&opts))
	require.Equal(t, -1, opts.MaxReconnect)

	require.Equal(t, nats.DefaultURL, n.Publisher.URL)
	require.False(t, n.Publisher.JetStream.Disabled, "publishes through JetStream and waits for the stream's ack")
	require.False(t, n.Publisher.JetStream.TrackMsgId)
	require.False(t, n.Publisher.JetStream.AutoProvision)

	// consumer.New checks the retry budget against the ack deadline. Its store is
	// never called.
	store := struct{ consumer.Store }{}
	_, err = consumer.New(consumer.Config{Store: store, AckDeadline: n.AckDeadline})
	require.NoError(t, err, "the default retry policy fits: MaxElapsedTime defaults to half the deadline")
	_, err = consumer.New(consumer.Config{Store: store, AckDeadline: n.AckDeadline, HandlerTimeout: 10 * time.Second})
	require.ErrorContains(t, err, "is not shorter than Config.AckDeadline 30s", "5 attempts of up to 10s do not fit in 30s")
}

// Subscribers built with transports.NATSJetStreamConfig, against the pitfalls
// docs/transports.md lists, on a real server and its own counters.
func TestNATSJetStreamConfig(t *testing.T) {
	t.Parallel()
	url := testbroker.NATSURL(t)

	type testBundle struct {
		js     nats.JetStreamContext
		stream string
		n      transports.NATSJetStream
		pub    message.Publisher
	}
	// setup makes a stream of its own and the helper's configuration for it with
	// ackWait, and deploys the durable consumer when deploy is set.
	setup := func(t *testing.T, ackWait time.Duration, deploy bool) *testBundle {
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
		n, err := transports.NATSJetStreamConfig(transports.NATSConfig{URL: url, Stream: stream, Consumer: "billing", AckWait: ackWait})
		require.NoError(t, err)
		if deploy {
			_, err = js.AddConsumer(stream, n.Consumer)
			require.NoError(t, err)
		}
		pub, err := natspub.NewPublisher(n.Publisher, watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = pub.Close() })
		return &testBundle{js: js, stream: stream, n: n, pub: pub}
	}
	// replica starts a subscriber of bundle's, as one replica would.
	replica := func(t *testing.T, b *testBundle) (*natspub.Subscriber, <-chan *message.Message) {
		t.Helper()
		sub, err := natspub.NewSubscriber(b.n.Subscriber, watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = sub.Close() })
		msgs, err := sub.Subscribe(context.Background(), b.stream)
		require.NoError(t, err)
		return sub, msgs
	}
	// subscribeErr is the error of a subscription with cfg. The subscriber is not
	// closed: after a failed Subscribe, watermill-nats' Close waits its CloseTimeout.
	subscribeErr := func(t *testing.T, cfg natspub.SubscriberConfig, stream string) error {
		t.Helper()
		conn, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		sub, err := natspub.NewSubscriberWithNatsConn(conn, cfg.GetSubscriberSubscriptionConfig(), watermill.NopLogger{})
		require.NoError(t, err)
		_, err = sub.Subscribe(context.Background(), stream)
		return err
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
	consumerInfo := func(t *testing.T, b *testBundle) *nats.ConsumerInfo {
		t.Helper()
		info, err := b.js.ConsumerInfo(b.stream, "billing")
		require.NoError(t, err)
		return info
	}
	// settled waits until the server has every delivered message acked and nothing left
	// to deliver, and returns the consumer's info then.
	settled := func(t *testing.T, b *testBundle, published uint64) *nats.ConsumerInfo {
		t.Helper()
		var info *nats.ConsumerInfo
		require.Eventually(t, func() bool {
			info = consumerInfo(t, b)
			return info.AckFloor.Stream == published && info.NumAckPending == 0 && info.NumPending == 0
		}, 10*time.Second, 10*time.Millisecond, "every message acked")
		return info
	}

	t.Run("ReplicasShareTheDurable", func(t *testing.T) {
		t.Parallel()
		// A message on its way to a replica that stops comes back after AckWait.
		b := setup(t, 2*time.Second, true)
		var mu sync.Mutex
		got := map[string][]int{} // event ID -> the replicas that received it
		received := func() int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, rs := range got {
				n += len(rs)
			}
			return n
		}
		var subs []*natspub.Subscriber
		for i := range 2 {
			sub, msgs := replica(t, b)
			subs = append(subs, sub)
			go func() {
				for msg := range msgs {
					mu.Lock()
					got[msg.Metadata.Get("event_id")] = append(got[msg.Metadata.Get("event_id")], i)
					mu.Unlock()
					msg.Ack()
				}
			}()
		}
		const events = 20
		for i := range events {
			require.NoError(t, b.pub.Publish(b.stream, newMessage(fmt.Sprintf("evt-%02d", i), "a")))
		}
		require.Eventually(t, func() bool { return received() == events }, 10*time.Second, 10*time.Millisecond)
		info := settled(t, b, events)
		require.Equal(t, uint64(events), info.Delivered.Consumer, "each message delivered once, to one replica")
		mu.Lock()
		byReplica := map[int]int{}
		for id, rs := range got {
			require.Len(t, rs, 1, "%s delivered to one replica", id)
			byReplica[rs[0]]++
		}
		mu.Unlock()
		require.Len(t, byReplica, 2, "both replicas received messages: %v", byReplica)

		// The first replica shuts down: the durable stays, and the other one receives
		// what follows, and what was on its way to the first one when it stopped (after
		// AckWait).
		require.NoError(t, subs[0].Close())
		consumerInfo(t, b)
		for i := range 5 {
			require.NoError(t, b.pub.Publish(b.stream, newMessage(fmt.Sprintf("evt-late-%d", i), "a")))
		}
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for i := range 5 {
				if !slices.Contains(got[fmt.Sprintf("evt-late-%d", i)], 1) {
					return false
				}
			}
			return true
		}, 10*time.Second, 10*time.Millisecond, "the remaining replica receives every later message")
		settled(t, b, events+5)
	})

	t.Run("ANackIsRedelivered", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0, true)
		_, msgs := replica(t, b)
		require.NoError(t, b.pub.Publish(b.stream, newMessage("evt-1", "a")))
		first := receive(t, msgs)
		first.Nack()
		again := receive(t, msgs)
		require.Equal(t, "evt-1", again.Metadata.Get("event_id"))
		again.Ack()
		info := settled(t, b, 1)
		require.Equal(t, uint64(2), info.Delivered.Consumer, "delivered, nacked, delivered again")
	})

	t.Run("AnAckedMessageIsNotRedeliveredAfterARestart", func(t *testing.T) {
		t.Parallel()
		// A delivery not acked at shutdown comes back after AckWait: keep it short.
		b := setup(t, time.Second, true)
		sub, msgs := replica(t, b)
		require.NoError(t, b.pub.Publish(b.stream, newMessage("evt-1", "a"), newMessage("evt-2", "b")))
		first := receive(t, msgs)
		require.Equal(t, "evt-1", first.Metadata.Get("event_id"))
		first.Ack()
		require.Eventually(t, func() bool { return consumerInfo(t, b).AckFloor.Stream == 1 }, 10*time.Second, 10*time.Millisecond,
			"the server confirmed the ack")
		second := receive(t, msgs)
		require.Equal(t, "evt-2", second.Metadata.Get("event_id"))

		// The replica restarts while evt-2 is still in its handler: shutting down does
		// not ack it.
		require.NoError(t, sub.Close())
		info := consumerInfo(t, b)
		require.Equal(t, uint64(1), info.AckFloor.Stream, "evt-2 is not acked by the shutdown")
		require.Equal(t, 1, info.NumAckPending)

		_, msgs = replica(t, b)
		again := receive(t, msgs)
		require.Equal(t, "evt-2", again.Metadata.Get("event_id"), "the unfinished message comes back, the acked one does not")
		again.Ack()
		info = settled(t, b, 2)
		require.Equal(t, uint64(3), info.Delivered.Consumer, "evt-1 delivered once, evt-2 twice")
	})

	t.Run("SubscribingNeverCreatesTheDurable", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0, false)
		err := subscribeErr(t, b.n.Subscriber, b.stream)
		require.ErrorIs(t, err, nats.ErrConsumerNotFound)
		_, err = b.js.ConsumerInfo(b.stream, "billing")
		require.ErrorIs(t, err, nats.ErrConsumerNotFound, "no consumer that a subscriber would delete when it ends")
	})

	t.Run("AnAckWaitOtherThanTheDeployedOneIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0, true) // deployed with the default, 30s
		other, err := transports.NATSJetStreamConfig(transports.NATSConfig{URL: url, Stream: b.stream, Consumer: "billing", AckWait: 10 * time.Second})
		require.NoError(t, err)
		err = subscribeErr(t, other.Subscriber, b.stream)
		require.ErrorContains(t, err, "configuration requests ack wait to be 10s, but consumer's value is 30s",
			"idem would be given an ack deadline the server does not keep")
	})

	t.Run("DeployingAgainSucceeds", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0, true)
		n, err := transports.NATSJetStreamConfig(transports.NATSConfig{URL: url, Stream: b.stream, Consumer: "billing"})
		require.NoError(t, err)
		_, err = b.js.AddConsumer(b.stream, n.Consumer)
		require.NoError(t, err, "the same configuration, the same deliver subject: creating it again is a no-op")
	})
}
