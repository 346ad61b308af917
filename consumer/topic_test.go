package consumer_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// flakyPublisher fails while down is set, as a broker that is unreachable.
type flakyPublisher struct {
	message.Publisher
	down atomic.Bool
}

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.down.Load() {
		return errors.New("broker unreachable")
	}
	return p.Publisher.Publish(topic, msgs...)
}

func TestDeadLetterTopicSurvivesAFailingPublish(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	pub := &flakyPublisher{Publisher: bus}
	pub.down.Store(true)
	topic, err := dlq.NewTopicPublisher(dlq.TopicPublisherConfig{Store: b.store, Publisher: pub, Topic: "orders.dlq", Interval: time.Hour, Logger: discardLogger()})
	require.NoError(t, err)
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), DeadLetterTopic: topic, Logger: discardLogger()})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error { return retry.Permanent(errors.New("bad order")) })

	msg := newMessage("evt-1", `{"id":1}`)
	msg.Metadata.Set("correlation_id", "corr-9")
	require.NoError(t, deliver(h, msg), "dead-lettered and acked, whatever the topic's broker does")

	ctx := context.Background()
	n, err := topic.PublishPending(ctx)
	require.Error(t, err, "the broker is down")
	require.Zero(t, n)
	require.Equal(t, 1, b.deadLetters(t), "the stored dead letter is untouched")

	pub.down.Store(false)
	msgs, err := bus.Subscribe(ctx, "orders.dlq")
	require.NoError(t, err)
	n, err = topic.PublishPending(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n, "published after recovery")
	n, err = topic.PublishPending(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "and only once")

	select {
	case got := <-msgs:
		got.Ack()
		require.Equal(t, `{"id":1}`, string(got.Payload))
		require.Equal(t, "evt-1", got.Metadata.Get("event_id"))
		require.Equal(t, "permanent", got.Metadata.Get(dlq.HeaderReason))
		require.Equal(t, "1", got.Metadata.Get(dlq.HeaderAttempts))
		require.Equal(t, "orders", got.Metadata.Get(dlq.HeaderConsumer))
		require.Equal(t, "corr-9", got.Metadata.Get("correlation_id"))
		require.NotEmpty(t, got.Metadata.Get(dlq.HeaderFingerprint))
	case <-time.After(10 * time.Second):
		t.Fatal("nothing was published to the dead-letter topic")
	}
	require.Equal(t, 1, b.deadLetters(t), "stored once")
}

func TestDeadLetterTopicRunPublishesOnNotify(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	topic, err := dlq.NewTopicPublisher(dlq.TopicPublisherConfig{Store: b.store, Publisher: bus, Topic: "orders.dlq", Interval: time.Hour, Logger: discardLogger()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	msgs, err := bus.Subscribe(ctx, "orders.dlq")
	require.NoError(t, err)
	go func() { done <- topic.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), DeadLetterTopic: topic, Logger: discardLogger()})
	require.NoError(t, err)
	h := c.WrapConsumer("orders", func(msg *message.Message) error { return retry.Permanent(errors.New("bad order")) })
	require.NoError(t, deliver(h, newMessage("evt-2", "x")))
	select {
	case got := <-msgs:
		got.Ack()
		require.Equal(t, "evt-2", got.Metadata.Get("event_id"))
	case <-time.After(10 * time.Second):
		t.Fatal("a new dead letter was not published promptly")
	}
}
