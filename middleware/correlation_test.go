package middleware_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/middleware"
)

func TestCorrelation(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		seen     string // the correlation ID the handler found in its context
		seenOK   bool
		seenMeta string // the consumed message's correlation_id as the handler saw it
		produce  func() []*message.Message
		handler  message.HandlerFunc
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		bundle := &testBundle{produce: func() []*message.Message {
			return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("out"))}
		}}
		bundle.handler = middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
			bundle.seen, bundle.seenOK = middleware.CorrelationID(msg.Context())
			bundle.seenMeta = msg.Metadata.Get(middleware.CorrelationIDKey)
			return bundle.produce(), nil
		})
		return bundle
	}

	t.Run("GeneratesAnIDWhenMissing", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := newMessage("evt-1", "x")
		produced, err := bundle.handler(msg)
		require.NoError(t, err)
		require.True(t, bundle.seenOK, "the handler finds a correlation ID in its context")
		require.NotEmpty(t, bundle.seen)
		require.Empty(t, bundle.seenMeta, "the consumed message's metadata is left as it came")
		require.Empty(t, msg.Metadata.Get(middleware.CorrelationIDKey), "the consumed message's metadata is left as it came")
		require.Len(t, produced, 1)
		require.Equal(t, bundle.seen, produced[0].Metadata.Get(middleware.CorrelationIDKey))
	})

	t.Run("GeneratesADifferentIDPerMessage", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		_, err := bundle.handler(newMessage("evt-1", "x"))
		require.NoError(t, err)
		first := bundle.seen
		_, err = bundle.handler(newMessage("evt-2", "x"))
		require.NoError(t, err)
		require.NotEqual(t, first, bundle.seen)
	})

	t.Run("KeepsAnExistingID", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.CorrelationIDKey, "corr-1")
		produced, err := bundle.handler(msg)
		require.NoError(t, err)
		require.True(t, bundle.seenOK)
		require.Equal(t, "corr-1", bundle.seen)
		require.Equal(t, "corr-1", msg.Metadata.Get(middleware.CorrelationIDKey))
		require.Equal(t, "corr-1", produced[0].Metadata.Get(middleware.CorrelationIDKey))
	})

	t.Run("CausationIsTheEventID", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.produce = func() []*message.Message {
			return []*message.Message{
				message.NewMessage(watermill.NewUUID(), []byte("a")),
				message.NewMessage(watermill.NewUUID(), []byte("b")),
			}
		}
		msg := newMessage("evt-7", "x")
		msg.Metadata.Set(middleware.CorrelationIDKey, "corr-7")
		produced, err := bundle.handler(msg)
		require.NoError(t, err)
		require.Len(t, produced, 2)
		for _, p := range produced {
			require.Equal(t, "corr-7", p.Metadata.Get(middleware.CorrelationIDKey))
			require.Equal(t, "evt-7", p.Metadata.Get(middleware.CausationIDKey))
		}
	})

	t.Run("CausationFallsBackToTheMessageUUID", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		msg := newMessage("", "x")
		produced, err := bundle.handler(msg)
		require.NoError(t, err)
		require.Equal(t, msg.UUID, produced[0].Metadata.Get(middleware.CausationIDKey))
	})

	t.Run("CausationIsTheEventIDOfACustomKeyFunc", func(t *testing.T) {
		t.Parallel()
		// The consumed event's ID is what the configured KeyFunc extracts (DESIGN.md
		// §4.1, §5), not necessarily metadata event_id.
		bundle := setup(t)
		dedupe, err := middleware.Dedup(middleware.DedupConfig{
			Store:    deduptest.NewMemoryStore(),
			Consumer: "orders",
			KeyFunc:  dedup.FromMetadata("order_id"),
			Logger:   testLogger(t),
		})
		require.NoError(t, err)
		h := chain(func(msg *message.Message) ([]*message.Message, error) { return bundle.produce(), nil },
			middleware.Correlation, dedupe)
		msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
		msg.Metadata.Set("order_id", "order-7")
		produced, err := h(msg)
		require.NoError(t, err)
		require.Len(t, produced, 1)
		require.Equal(t, "order-7", produced[0].Metadata.Get(middleware.CausationIDKey),
			"causation_id is the event ID the dedup key was made of, not the transport UUID")
	})

	t.Run("DoesNotOverwriteIDsTheHandlerSet", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.produce = func() []*message.Message {
			own := message.NewMessage(watermill.NewUUID(), []byte("own"))
			own.Metadata.Set(middleware.CorrelationIDKey, "handler-corr")
			own.Metadata.Set(middleware.CausationIDKey, "handler-cause")
			return []*message.Message{own, message.NewMessage(watermill.NewUUID(), []byte("plain"))}
		}
		msg := newMessage("evt-1", "x")
		msg.Metadata.Set(middleware.CorrelationIDKey, "corr-1")
		produced, err := bundle.handler(msg)
		require.NoError(t, err)
		require.Equal(t, "handler-corr", produced[0].Metadata.Get(middleware.CorrelationIDKey))
		require.Equal(t, "handler-cause", produced[0].Metadata.Get(middleware.CausationIDKey))
		require.Equal(t, "corr-1", produced[1].Metadata.Get(middleware.CorrelationIDKey))
		require.Equal(t, "evt-1", produced[1].Metadata.Get(middleware.CausationIDKey))
	})

	t.Run("ReturnsTheHandlerError", func(t *testing.T) {
		t.Parallel()
		h := middleware.Correlation(func(*message.Message) ([]*message.Message, error) { return nil, errBoom })
		produced, err := h(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, errBoom)
		require.Empty(t, produced)
	})

	t.Run("ContextKeepsItsValues", func(t *testing.T) {
		t.Parallel()
		type key struct{}
		var got any
		h := middleware.Correlation(func(msg *message.Message) ([]*message.Message, error) {
			got = msg.Context().Value(key{})
			return nil, nil
		})
		msg := newMessage("evt-1", "x")
		msg.SetContext(context.WithValue(context.Background(), key{}, "kept"))
		_, err := h(msg)
		require.NoError(t, err)
		require.Equal(t, "kept", got)
	})
}

func TestWithCorrelationID(t *testing.T) {
	t.Parallel()

	id, ok := middleware.CorrelationID(middleware.WithCorrelationID(context.Background(), "corr-1"))
	require.True(t, ok)
	require.Equal(t, "corr-1", id)

	_, ok = middleware.CorrelationID(middleware.WithCorrelationID(context.Background(), ""))
	require.False(t, ok, "an empty ID is no ID")
}
