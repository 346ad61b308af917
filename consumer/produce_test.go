package consumer_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/outbox"
)

// A handler's messages are published inside the attempt, before COMMIT: a publish that
// fails rolls the attempt back, and the redelivery publishes them; nothing is lost to
// a publish failing after the commit.
func TestProducedMessagesSurviveAFailingPublish(t *testing.T) {
	t.Parallel()
	b := setup(t)
	bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 100, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	flaky := &flakyPublisher{Publisher: bus}
	flaky.down.Store(true)
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), Logger: testLogger(t)})
	require.NoError(t, err)
	shipped, err := bus.Subscribe(context.Background(), "shipments")
	require.NoError(t, err)

	var publishAttempts atomic.Int32
	runRouter(t, func(r *message.Router) {
		c.AddHandler(r, "shipping", "orders", bus, "shipments", flaky, func(msg *message.Message) ([]*message.Message, error) {
			if err := b.effect(msg.Context(), msg); err != nil {
				return nil, err
			}
			if publishAttempts.Add(1) == 2 {
				flaky.down.Store(false) // the broker comes back
			}
			return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("ship it"))}, nil
		})
	})
	require.NoError(t, bus.Publish("orders", newMessage("evt-1", "placed")))

	select {
	case got := <-shipped:
		got.Ack()
		require.Equal(t, "evt-1", got.Metadata.Get("causation_id"))
		require.NotEmpty(t, got.Metadata.Get("correlation_id"))
		require.Contains(t, got.Metadata.Get("event_id"), "produced:", "a derived, stable event ID for the downstream consumer")
	case <-time.After(20 * time.Second):
		t.Fatal("the produced message was lost")
	}
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-1") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, publishAttempts.Load(), int32(2), "the first publish failed and rolled the attempt back")
	require.Zero(t, b.attempts(t, "shipping", "evt-1"), "a broker outage spends no attempt")
}

// With the outbox, consume-transform-produce is exactly once in effect: the produced
// messages commit with the consumed event's effects, or not at all.
func TestProducedMessagesGoThroughTheOutbox(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var rb [5]byte
	_, _ = rand.Read(rb[:])
	ocfg := outbox.Config{Topic: "idem_outbox_consumer_" + hex.EncodeToString(rb[:]), PollInterval: 10 * time.Millisecond}
	ctx := context.Background()
	require.NoError(t, outbox.Migrate(ctx, b.pool, ocfg))
	t.Cleanup(func() {
		for _, table := range []string{"watermill_" + ocfg.Topic, "watermill_offsets_" + ocfg.Topic} {
			_, _ = b.pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize())
		}
	})
	outboxRows := func() int {
		return b.count(t, "SELECT count(*) FROM "+pgx.Identifier{"watermill_" + ocfg.Topic}.Sanitize())
	}

	bus := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 100, Persistent: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = bus.Close() })
	c, err := consumer.New(consumer.Config{Store: b.store, Retry: fastPolicy(), Outbox: outbox.Writer{Config: ocfg}, Logger: testLogger(t)})
	require.NoError(t, err)
	var fail atomic.Bool
	fail.Store(true)
	var handled atomic.Int32
	runRouter(t, func(r *message.Router) {
		c.AddHandler(r, "shipping", "orders", bus, "shipments", bus, func(msg *message.Message) ([]*message.Message, error) {
			handled.Add(1)
			if err := b.effect(msg.Context(), msg); err != nil {
				return nil, err
			}
			out := []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("ship it"))}
			if fail.CompareAndSwap(true, false) {
				return out, errors.New("inventory service timeout") // the effect and the message roll back
			}
			return out, nil
		})
	})
	require.NoError(t, bus.Publish("orders", newMessage("evt-1", "placed")))
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-1") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, outboxRows(), "one message in the outbox: the failed attempt's rolled back")
	// A duplicate delivery, then another event: gochannel delivers them in order, so
	// once evt-2's effect is there, the duplicate was handled.
	require.NoError(t, bus.Publish("orders", newMessage("evt-1", "placed"), newMessage("evt-2", "placed")))
	require.Eventually(t, func() bool { return b.effectsOf(t, "evt-2") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, int32(3), handled.Load(), "the duplicate never reached the handler")
	require.Equal(t, 2, outboxRows(), "one message per processed event; the duplicate produced nothing")

	shipped, err := bus.Subscribe(ctx, "shipments")
	require.NoError(t, err)
	relay, err := outbox.NewRelay(b.pool, bus, ocfg)
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	t.Cleanup(func() { cancel(); _ = relay.Close(); <-done })
	causes := map[string]bool{}
	for len(causes) < 2 {
		select {
		case got := <-shipped:
			got.Ack()
			require.Contains(t, got.Metadata.Get("event_id"), "produced:")
			require.NotEmpty(t, got.Metadata.Get("correlation_id"))
			causes[got.Metadata.Get("causation_id")] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("the relay published only %v", causes)
		}
	}
	require.Equal(t, map[string]bool{"evt-1": true, "evt-2": true}, causes)
}
