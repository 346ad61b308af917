package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

type orderPlaced struct {
	OrderID string
	Amount  int
}

func TestConsumer(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		store   *sqlite.Store
		handler message.NoPublishHandlerFunc
		calls   atomic.Int32
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		b := &testBundle{store: testStore(t, sqlite.Config{})}
		exec(t, b.store.DB(), "CREATE TABLE orders (order_id TEXT PRIMARY KEY, amount INTEGER NOT NULL) STRICT")
		c, err := consumer.New(consumer.Config{
			Store:  b.store,
			Retry:  retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		require.NoError(t, err)
		b.handler = c.WrapConsumer("orders", sqlite.Handler(func(ctx context.Context, tx *sql.Tx, e orderPlaced) error {
			b.calls.Add(1)
			if e.Amount < 0 {
				return retry.Permanent(fmt.Errorf("order %s: negative amount %d", e.OrderID, e.Amount))
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO orders (order_id, amount) VALUES (?1, ?2)", e.OrderID, e.Amount)
			return err
		}))
		return b
	}
	newMessage := func(eventID, payload string) *message.Message {
		msg := message.NewMessage(watermill.NewUUID(), []byte(payload))
		msg.Metadata.Set("event_id", eventID)
		return msg
	}

	t.Run("DuplicateAppliesOnceAndPermanentIsDeadLettered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		msg := newMessage("evt-1", `{"OrderID":"o-1","Amount":42}`)
		require.NoError(t, b.handler(msg.Copy()), "first delivery: processed and acked")
		require.NoError(t, b.handler(msg.Copy()), "second delivery: a duplicate, acked")
		require.Equal(t, int32(1), b.calls.Load(), "the duplicate does not run the handler")
		require.Equal(t, 1, count(t, b.store.DB(), "SELECT count(*) FROM orders WHERE order_id = 'o-1'"))

		poison := newMessage("evt-2", `{"OrderID":"o-2","Amount":-1}`)
		require.NoError(t, b.handler(poison.Copy()), "a dead-lettered message is acked")
		require.Equal(t, int32(2), b.calls.Load(), "a permanent error is not retried")
		require.Zero(t, count(t, b.store.DB(), "SELECT count(*) FROM orders WHERE order_id = 'o-2'"))

		require.Equal(t, 1, count(t, b.store.DB(), "SELECT count(*) FROM dead_letters"))
		dl, err := b.store.DeadLetter(ctx, "orders", "evt-2")
		require.NoError(t, err)
		require.Equal(t, dlq.ReasonPermanent, dl.Reason)
		require.Equal(t, 1, dl.Attempts)
		require.Contains(t, dl.Error, "negative amount")
		require.Equal(t, []byte(poison.Payload), dl.Payload, "payload byte for byte")
		require.Equal(t, "evt-2", dl.Metadata["event_id"])
		require.Equal(t, dlq.StatusPending, dl.Status)

		st, err := b.store.Stats(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(1), st.Processed)
		require.Equal(t, int64(1), st.PendingDeadLetters)
	})

	t.Run("UndecodablePayloadIsDeadLettered", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		require.NoError(t, b.handler(newMessage("evt-1", "not json")))
		require.Zero(t, b.calls.Load())
		dl, err := b.store.DeadLetter(context.Background(), "orders", "evt-1")
		require.NoError(t, err)
		require.Equal(t, dlq.ReasonPermanent, dl.Reason)
	})

	t.Run("ConcurrentDuplicatesApplyOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		msg := newMessage("evt-1", `{"OrderID":"o-1","Amount":42}`)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range 8 {
			wg.Go(func() { errs[i] = b.handler(msg.Copy()) })
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...), "every delivery, the duplicates included, is acked")
		require.Equal(t, int32(1), b.calls.Load())
		require.Equal(t, 1, count(t, b.store.DB(), "SELECT count(*) FROM orders"))
	})

	t.Run("HandlerOutsideAConsumerHasNoTx", func(t *testing.T) {
		t.Parallel()
		h := sqlite.Handler(func(context.Context, *sql.Tx, orderPlaced) error { return nil })
		err := h(newMessage("evt-1", `{}`))
		require.ErrorIs(t, err, sqlite.ErrNoTx)
		require.Equal(t, retry.ClassInfrastructure, retry.Classify(err))
	})
}
