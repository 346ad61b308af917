package consumer_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

const (
	ordersTopic    = "orders"
	confirmedTopic = "orders.confirmed"
	confirmName    = "confirm-orders"
	auditName      = "audit-orders"
)

// routerBundle is a testBundle with a real Watermill router on gochannel: confirm-orders
// consumes orders, writes an effect and produces one message on orders.confirmed, which
// audit-orders consumes and writes an effect for.
type routerBundle struct {
	*testBundle
	pubSub *gochannel.GoChannel
	router *message.Router

	mu           sync.Mutex
	acked        map[string]int    // handler name -> deliveries the stack acked
	nacked       map[string]int    // handler name -> deliveries the stack nacked
	correlations map[string]string // event ID -> correlation ID the handler found in ctx
	out          []*message.Message
}

func setupRouter(t *testing.T) *routerBundle {
	t.Helper()
	rb := &routerBundle{
		testBundle:   setup(t),
		pubSub:       gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}),
		acked:        map[string]int{},
		nacked:       map[string]int{},
		correlations: map[string]string{},
	}
	t.Cleanup(func() { _ = rb.pubSub.Close() })

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	rb.router = r
	// Outside idem's stack: counts how each delivery ended for the router.
	r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			produced, err := h(msg)
			name := message.HandlerNameFromCtx(msg.Context())
			rb.mu.Lock()
			defer rb.mu.Unlock()
			if err == nil {
				rb.acked[name]++
			} else {
				rb.nacked[name]++
			}
			return produced, err
		}
	})

	rb.consumer.AddHandler(r, confirmName, ordersTopic, rb.pubSub, confirmedTopic, rb.pubSub,
		func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			eventID := msg.Metadata.Get(dedup.MetadataKey)
			rb.seeCorrelation(ctx, eventID)
			if err := rb.effect(ctx, msg); err != nil {
				return nil, err
			}
			if string(msg.Payload) == "poison" {
				return nil, retry.Permanent(fmt.Errorf("order %s: unknown currency %q", eventID, "XXX"))
			}
			confirmed := message.NewMessage(watermill.NewUUID(), []byte("confirmed "+string(msg.Payload)))
			confirmed.Metadata.Set(dedup.MetadataKey, "confirmed-"+eventID)
			return []*message.Message{confirmed}, nil
		})
	rb.consumer.AddConsumerHandler(r, auditName, confirmedTopic, rb.pubSub, func(msg *message.Message) error {
		rb.seeCorrelation(msg.Context(), msg.Metadata.Get(dedup.MetadataKey))
		return rb.effect(msg.Context(), msg)
	})
	return rb
}

func (rb *routerBundle) seeCorrelation(ctx context.Context, eventID string) {
	id, _ := middleware.CorrelationID(ctx)
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.correlations[eventID] = id
}

// collect receives what is published on topic, acking it, until the pub/sub closes.
func (rb *routerBundle) collect(t *testing.T, topic string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, err := rb.pubSub.Subscribe(ctx, topic)
	require.NoError(t, err)
	go func() {
		for msg := range msgs {
			rb.mu.Lock()
			rb.out = append(rb.out, msg)
			rb.mu.Unlock()
			msg.Ack()
		}
	}()
}

// run starts the router and returns once its handlers are subscribed; the returned
// channel yields what Run returned.
func (rb *routerBundle) run(t *testing.T) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- rb.router.Run(context.Background()) }()
	select {
	case <-rb.router.Running():
	case err := <-done:
		require.NoError(t, err, "the router stopped before running")
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the router did not start")
	}
	return done
}

func (rb *routerBundle) settled(acked, audited, out int) bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.acked[confirmName] >= acked && rb.acked[auditName] >= audited && len(rb.out) >= out
}

func TestRouter(t *testing.T) {
	t.Parallel()
	rb := setupRouter(t)
	rb.collect(t, confirmedTopic)
	done := rb.run(t)

	withCorrelation := func(msg *message.Message, id string) *message.Message {
		if id != "" {
			msg.Metadata.Set(middleware.CorrelationIDKey, id)
		}
		return msg
	}
	evt2 := withCorrelation(newMessage("evt-2", "order 2"), "corr-2")
	duplicate := evt2.Copy()
	duplicate.UUID = watermill.NewUUID() // a republished copy: same event, new transport ID
	noID := withCorrelation(newMessage("", "order without an ID"), "corr-5")
	published := []*message.Message{
		withCorrelation(newMessage("evt-1", "order 1"), "corr-1"),
		evt2,
		newMessage("evt-3", "order 3"), // no correlation ID: one is generated
		duplicate,
		withCorrelation(newMessage("evt-4", "poison"), "corr-4"),
		noID,
	}
	for _, msg := range published {
		require.NoError(t, rb.pubSub.Publish(ordersTopic, msg.Copy()))
	}

	// Six deliveries acked by confirm-orders (three processed, one duplicate, two
	// dead-lettered), three by audit-orders, three confirmations seen on the topic.
	require.Eventually(t, func() bool { return rb.settled(6, 3, 3) }, 30*time.Second, 10*time.Millisecond,
		"the deliveries did not settle")

	require.NoError(t, rb.router.Close(), "the router closes cleanly")
	select {
	case err := <-done:
		require.NoError(t, err, "Run returns cleanly")
	case <-time.After(15 * time.Second):
		require.FailNow(t, "Run did not return after Close")
	}

	rb.mu.Lock()
	defer rb.mu.Unlock()
	require.Equal(t, map[string]int{confirmName: 6, auditName: 3}, rb.acked, "every delivery acked once")
	require.Empty(t, rb.nacked, "nothing was handed back")

	// Effects: exactly once per event and consumer; the poison message's rolled back.
	for _, id := range []string{"evt-1", "evt-2", "evt-3", "confirmed-evt-1", "confirmed-evt-2", "confirmed-evt-3"} {
		require.Equal(t, 1, rb.effectsOf(t, id), "effects of %s", id)
	}
	require.Zero(t, rb.effectsOf(t, "evt-4"), "the poison message's effect rolled back")
	require.Equal(t, 6, rb.count(t, "SELECT count(*) FROM "+rb.effects))

	// Produced messages: correlation carried over, causation = the consumed event.
	require.Len(t, rb.out, 3)
	byCause := map[string]*message.Message{}
	for _, msg := range rb.out {
		byCause[msg.Metadata.Get(middleware.CausationIDKey)] = msg
	}
	require.Len(t, byCause, 3, "one confirmation per event: the duplicate produced nothing")
	for _, tt := range []struct{ eventID, correlationID string }{
		{"evt-1", "corr-1"},
		{"evt-2", "corr-2"},
		{"evt-3", rb.correlations["evt-3"]},
	} {
		msg, ok := byCause[tt.eventID]
		require.True(t, ok, "a confirmation caused by %s", tt.eventID)
		require.NotEmpty(t, tt.correlationID)
		require.Equal(t, tt.correlationID, rb.correlations[tt.eventID], "the handler's context")
		require.Equal(t, tt.correlationID, msg.Metadata.Get(middleware.CorrelationIDKey), "the produced message")
		require.Equal(t, "confirmed-"+tt.eventID, msg.Metadata.Get(dedup.MetadataKey))
		require.Equal(t, tt.correlationID, rb.correlations["confirmed-"+tt.eventID], "the next consumer keeps it")
	}

	// Dead letters: the poison message and the one without an ID, with where they
	// came from.
	require.Equal(t, 2, rb.deadLetters(t))
	ctx := context.Background()
	poison, err := rb.store.DeadLetter(ctx, confirmName, "evt-4")
	require.NoError(t, err)
	require.Equal(t, dlq.ReasonPermanent, poison.Reason)
	require.Equal(t, 1, poison.Attempts)
	require.Equal(t, ordersTopic, poison.Topic)
	require.Equal(t, confirmName, poison.Handler)
	require.Equal(t, "corr-4", poison.CorrelationID)
	require.Equal(t, `order evt-4: unknown currency "XXX"`, poison.Error)
	require.Equal(t, []byte("poison"), poison.Payload)

	malformed, err := rb.store.DeadLetter(ctx, confirmName, dedup.DerivedKey(noID))
	require.NoError(t, err)
	require.Equal(t, dlq.ReasonMalformed, malformed.Reason)
	require.Equal(t, ordersTopic, malformed.Topic)
	require.Equal(t, confirmName, malformed.Handler)
	require.Equal(t, "corr-5", malformed.CorrelationID)
	require.Equal(t, noID.UUID, malformed.MessageUUID)
	require.Equal(t, map[string]string(noID.Metadata), malformed.Metadata, "the metadata as published")
}
