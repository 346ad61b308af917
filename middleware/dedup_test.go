package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

func TestDedup(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		store *recordingDedupStore
		cfg   middleware.DedupConfig

		mu      sync.Mutex
		calls   int
		effects map[string]int // committed effects per event ID
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		store := newRecordingDedupStore()
		return &testBundle{
			store:   store,
			cfg:     middleware.DedupConfig{Store: store, Consumer: "orders", Logger: testLogger(t)},
			effects: map[string]int{},
		}
	}
	// wrap returns h wrapped in Dedup as configured in bundle.cfg.
	wrap := func(t *testing.T, bundle *testBundle, h message.HandlerFunc) message.HandlerFunc {
		t.Helper()
		mw, err := middleware.Dedup(bundle.cfg)
		require.NoError(t, err)
		return mw(h)
	}
	// effectThen writes an effect through the attempt's transaction, then returns err.
	effectThen := func(bundle *testBundle, err error) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			bundle.mu.Lock()
			bundle.calls++
			bundle.mu.Unlock()
			tx, ok := deduptest.TxFromContext(msg.Context())
			if !ok {
				return nil, errors.New("no transaction in the context")
			}
			id := msg.Metadata.Get(dedup.MetadataKey)
			tx.OnCommit(func() {
				bundle.mu.Lock()
				defer bundle.mu.Unlock()
				bundle.effects[id]++
			})
			return nil, err
		}
	}
	key := dedup.Key{Consumer: "orders", EventID: "evt-1"}

	t.Run("DuplicateIsAckedWithoutCallingTheHandler", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := wrap(t, bundle, effectThen(bundle, nil))
		msg := newMessage("evt-1", "x")
		_, err := h(msg)
		require.NoError(t, err)
		for range 3 {
			produced, err := h(redeliver(msg))
			require.NoError(t, err, "a duplicate is acked")
			require.Nil(t, produced)
		}
		require.Equal(t, 1, bundle.calls)
		require.Equal(t, 1, bundle.effects["evt-1"])
	})

	t.Run("DistinctEventsAreEachProcessed", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := wrap(t, bundle, effectThen(bundle, nil))
		for _, id := range []string{"evt-1", "evt-2", "evt-1", "evt-3", "evt-2"} {
			_, err := h(newMessage(id, "x"))
			require.NoError(t, err)
		}
		require.Equal(t, 3, bundle.calls)
		require.Equal(t, map[string]int{"evt-1": 1, "evt-2": 1, "evt-3": 1}, bundle.effects)
	})

	t.Run("ReturnsWhatTheHandlerProduced", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		out := message.NewMessage(watermill.NewUUID(), []byte("out"))
		h := wrap(t, bundle, func(*message.Message) ([]*message.Message, error) {
			return []*message.Message{out}, nil
		})
		produced, err := h(newMessage("evt-1", "x"))
		require.NoError(t, err)
		require.Equal(t, []*message.Message{out}, produced)
	})

	t.Run("HandlerSeesTheTransactionAndTheContextIsRestored", func(t *testing.T) {
		t.Parallel()
		type valueKey struct{}
		for _, handlerErr := range []error{nil, errBoom} {
			bundle := setup(t)
			var sawTx bool
			var sawValue any
			h := wrap(t, bundle, func(msg *message.Message) ([]*message.Message, error) {
				_, sawTx = deduptest.TxFromContext(msg.Context())
				sawValue = msg.Context().Value(valueKey{})
				return nil, handlerErr
			})
			msg := newMessage("evt-1", "x")
			msg.SetContext(context.WithValue(context.Background(), valueKey{}, "kept"))
			_, err := h(msg)
			require.ErrorIs(t, err, handlerErr)
			require.True(t, sawTx, "the handler runs with the store's transaction in msg.Context()")
			require.Equal(t, "kept", sawValue, "and with the delivery's own values")
			_, inTx := deduptest.TxFromContext(msg.Context())
			require.False(t, inTx, "the transaction is gone from the message context afterwards (handler error: %v)", handlerErr)
			require.Equal(t, "kept", msg.Context().Value(valueKey{}))
		}
	})

	t.Run("FailureRollsBackAndIsRecordedScrubbed", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		cause := fmt.Errorf("connect postgres://u:secret@h/db: %w", errBoom)
		h := wrap(t, bundle, effectThen(bundle, cause))
		msg := newMessage("evt-1", "x")

		_, err := h(msg)
		require.Same(t, cause, err, "the handler's error is returned unchanged")
		require.Zero(t, bundle.effects["evt-1"], "the failed attempt's writes roll back")
		n, recorded := bundle.store.Failures(key)
		require.Equal(t, 1, n)
		require.NotContains(t, recorded, "secret")
		require.Equal(t, "connect postgres://u:REDACTED@h/db: boom", recorded)

		_, err = h(redeliver(msg))
		require.ErrorIs(t, err, errBoom)
		n, _ = bundle.store.Failures(key)
		require.Equal(t, 2, n, "failures add up across deliveries")
		require.Equal(t, 2, bundle.calls, "a failed event is not a duplicate")
	})

	t.Run("PermanentFailureIsRecorded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := wrap(t, bundle, effectThen(bundle, retry.Permanent(errBoom)))
		_, err := h(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, retry.ErrPermanent)
		n, _ := bundle.store.Failures(key)
		require.Equal(t, 1, n)
	})

	t.Run("InfrastructureFailureIsNotRecorded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := wrap(t, bundle, effectThen(bundle, retry.Infrastructure(errBoom)))
		for range 3 {
			_, err := h(newMessage("evt-1", "x"))
			require.ErrorIs(t, err, errBoom)
		}
		n, _ := bundle.store.Failures(key)
		require.Zero(t, n, "not the message's fault: no attempt is spent")
		_, records := bundle.store.keys()
		require.Empty(t, records)
		require.Zero(t, bundle.effects["evt-1"])
	})

	t.Run("CustomClassifyDecidesWhatIsRecorded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.cfg.Classify = func(err error) retry.Class {
			if errors.Is(err, errBoom) {
				return retry.ClassInfrastructure
			}
			return retry.Classify(err)
		}
		h := wrap(t, bundle, effectThen(bundle, errBoom))
		_, err := h(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, errBoom)
		n, _ := bundle.store.Failures(key)
		require.Zero(t, n)
	})

	t.Run("CancelledContextIsNotRecorded", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		h := wrap(t, bundle, func(msg *message.Message) ([]*message.Message, error) {
			cancel() // shutdown while the handler runs
			return nil, errBoom
		})
		msg := newMessage("evt-1", "x")
		msg.SetContext(ctx)
		_, err := h(msg)
		require.ErrorIs(t, err, errBoom)
		n, _ := bundle.store.Failures(key)
		require.Zero(t, n, "a shutdown spends no attempt")
	})

	t.Run("ContextAlreadyCancelled", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		h := wrap(t, bundle, effectThen(bundle, nil))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		msg := newMessage("evt-1", "x")
		msg.SetContext(ctx)
		_, err := h(msg)
		require.ErrorIs(t, err, context.Canceled)
		require.Zero(t, bundle.calls)
		n, _ := bundle.store.Failures(key)
		require.Zero(t, n)
	})

	t.Run("FailingRecordFailureIsInfrastructure", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		errDown := errors.New("attempts table unreachable")
		bundle.store.recordErr = errDown
		h := wrap(t, bundle, effectThen(bundle, errBoom))
		_, err := h(newMessage("evt-1", "x"))
		require.ErrorIs(t, err, errBoom, "the attempt's own error is kept")
		require.ErrorIs(t, err, errDown)
		require.ErrorIs(t, err, retry.ErrInfrastructure)
		require.Equal(t, retry.ClassInfrastructure, retry.Classify(err))
		require.Equal(t, retry.ClassInfrastructure, retry.Policy{}.Class(err))
	})

	t.Run("FailingRecordFailureOfAPermanentErrorIsInfrastructure", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.store.recordErr = errors.New("attempts table unreachable")
		h := wrap(t, bundle, effectThen(bundle, retry.Permanent(errBoom)))
		_, err := h(newMessage("evt-1", "x"))
		require.Equal(t, retry.ClassInfrastructure, retry.Classify(err),
			"the failure could not be counted: not dead-lettered, handed back")
	})

	t.Run("RecordFailureRunsDetachedWithItsOwnTimeout", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			bundle := setup(t)
			bundle.cfg.Timeout = 3 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			h := wrap(t, bundle, effectThen(bundle, errBoom))
			msg := newMessage("evt-1", "x")
			msg.SetContext(ctx)
			start := time.Now()
			_, err := h(msg)
			require.ErrorIs(t, err, errBoom)
			bundle.store.mu.Lock()
			require.Len(t, bundle.store.recordCtx, 1)
			rctx := bundle.store.recordCtx[0]
			bundle.store.mu.Unlock()
			deadline, ok := rctx.Deadline()
			require.True(t, ok)
			require.Equal(t, start.Add(3*time.Second), deadline, "bounded by DedupConfig.Timeout, not by the delivery")
		})
	})

	t.Run("InvalidEventIDIsAPermanentError", func(t *testing.T) {
		t.Parallel()
		for name, id := range map[string]string{
			"Missing": "",
			"NUL":     "evt-\x00",
			"NotUTF8": "evt-\xff",
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				bundle := setup(t)
				h := wrap(t, bundle, effectThen(bundle, nil))
				msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
				if id != "" {
					msg.Metadata.Set(dedup.MetadataKey, id)
				}
				_, err := h(msg)
				require.ErrorIs(t, err, dedup.ErrInvalidEventID)
				var invalid *dedup.InvalidEventIDError
				require.ErrorAs(t, err, &invalid)
				var p interface{ Permanent() bool }
				require.ErrorAs(t, err, &p)
				require.True(t, p.Permanent())
				require.Equal(t, retry.ClassPermanent, retry.Classify(err))
				require.Zero(t, bundle.calls)
				runs, records := bundle.store.keys()
				require.Empty(t, runs, "nothing is claimed")
				require.Empty(t, records)
			})
		}
	})

	t.Run("CustomKeyFuncAndConsumerAreUsed", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		bundle.cfg.Consumer = "billing"
		bundle.cfg.KeyFunc = dedup.FromMetadata("order_id")
		h := wrap(t, bundle, effectThen(bundle, errBoom))
		msg := newMessage("evt-ignored", "x")
		msg.Metadata.Set("order_id", "order-7")
		_, err := h(msg)
		require.ErrorIs(t, err, errBoom)
		want := dedup.Key{Consumer: "billing", EventID: "order-7"}
		runs, records := bundle.store.keys()
		require.Equal(t, []dedup.Key{want}, runs)
		require.Equal(t, []dedup.Key{want}, records)
		n, _ := bundle.store.Failures(want)
		require.Equal(t, 1, n)

		_, err = h(newMessage("evt-ignored", "x"))
		require.ErrorIs(t, err, dedup.ErrInvalidEventID, "the custom key is required")
		require.ErrorContains(t, err, "metadata key order_id is missing or empty")
	})

	t.Run("StoreIsRequired", func(t *testing.T) {
		t.Parallel()
		_, err := middleware.Dedup(middleware.DedupConfig{})
		require.ErrorContains(t, err, "DedupConfig.Store is required")
	})
}
