// Package dlqtest checks that a dlq.Store behaves as package dlq documents. Every store
// idem ships runs it, and so can any other implementation.
package dlqtest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

// Harness is one fresh, empty store and a way to read back what it stored.
type Harness struct {
	// Store is the store under test, empty.
	Store dlq.Store
	// Get reads the dead letter of (consumer, eventID) with every field the store
	// keeps, or returns an error wrapping dlq.ErrNotFound.
	Get func(ctx context.Context, consumer, eventID string) (*dlq.DeadLetter, error)
}

func letter(consumer, eventID string) *dlq.DeadLetter {
	return &dlq.DeadLetter{
		Consumer:      consumer,
		EventID:       eventID,
		Topic:         "orders",
		Handler:       consumer,
		MessageUUID:   "0b6f2a4e-5f63-4a1e-9d0e-1c1f7d0f9a11",
		Payload:       []byte{0x00, 0xff, '{', '}', 0x1b, '[', '3', '1', 'm'},
		Metadata:      map[string]string{"event_id": eventID, "bin": "\xff\x00", "base64:x": "y", "correlation_id": "corr-1"},
		Reason:        dlq.ReasonExhausted,
		Error:         "boom",
		Fingerprint:   "0123456789abcdef",
		Attempts:      3,
		CorrelationID: "corr-1",
		TraceID:       "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanID:        "00f067aa0ba902b7",
		Host:          "worker-7",
		EventType:     "OrderPlaced",
		EventVersion:  "2",
	}
}

// Run runs the conformance suite. newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	ctx := context.Background()

	t.Run("PutStoresEverything", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		in := letter("billing", "evt-1")
		created, err := h.Store.Put(ctx, in)
		require.NoError(t, err)
		require.True(t, created)
		require.NotZero(t, in.ID, "Put sets the ID")
		require.Equal(t, dlq.StatusPending, in.Status)
		require.Equal(t, 1, in.Count)
		require.False(t, in.FirstFailedAt.IsZero())
		require.False(t, in.LastFailedAt.Before(in.FirstFailedAt))

		got, err := h.Get(ctx, "billing", "evt-1")
		require.NoError(t, err)
		want := letter("billing", "evt-1")
		require.Equal(t, in.ID, got.ID)
		require.Equal(t, want.Payload, got.Payload, "payload byte for byte")
		require.Equal(t, want.Metadata, got.Metadata, "metadata byte for byte")
		require.Equal(t, want.Topic, got.Topic)
		require.Equal(t, want.Handler, got.Handler)
		require.Equal(t, want.MessageUUID, got.MessageUUID)
		require.Equal(t, want.Reason, got.Reason)
		require.Equal(t, want.Error, got.Error)
		require.Equal(t, want.Fingerprint, got.Fingerprint)
		require.Equal(t, want.Attempts, got.Attempts)
		require.Equal(t, want.CorrelationID, got.CorrelationID)
		require.Equal(t, want.TraceID, got.TraceID)
		require.Equal(t, want.SpanID, got.SpanID)
		require.Equal(t, want.Host, got.Host)
		require.Equal(t, want.EventType, got.EventType)
		require.Equal(t, want.EventVersion, got.EventVersion)
		require.Equal(t, dlq.StatusPending, got.Status)
		require.NotEmpty(t, got.History, "a dead letter has at least its last error in its history")
		require.Equal(t, want.Error, got.History[0].Error)
		require.False(t, got.History[0].At.IsZero())
	})

	t.Run("EmptyPayloadAndMetadata", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		in := &dlq.DeadLetter{Consumer: "c", EventID: "e", Reason: dlq.ReasonMalformed, Error: "no id"}
		_, err := h.Store.Put(ctx, in)
		require.NoError(t, err)
		got, err := h.Get(ctx, "c", "e")
		require.NoError(t, err)
		require.Empty(t, got.Payload)
		require.Empty(t, got.Metadata)
	})

	t.Run("SecondPutUpdatesTheSameRow", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		first := letter("billing", "evt-1")
		_, err := h.Store.Put(ctx, first)
		require.NoError(t, err)
		second := letter("billing", "evt-1")
		second.Error, second.Attempts, second.Reason = "boom again", 4, dlq.ReasonPermanent
		created, err := h.Store.Put(ctx, second)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, first.ID, second.ID, "one row per (consumer, event_id)")
		require.Equal(t, 2, second.Count)
		got, err := h.Get(ctx, "billing", "evt-1")
		require.NoError(t, err)
		require.Equal(t, "boom again", got.Error)
		require.Equal(t, 4, got.Attempts)
		require.Equal(t, dlq.ReasonPermanent, got.Reason)
		require.Equal(t, 2, got.Count)
		require.Equal(t, first.FirstFailedAt.UTC(), got.FirstFailedAt.UTC(), "the first failure stays the first")
	})

	t.Run("KeysAreIndependent", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		for _, k := range [][2]string{{"billing", "evt-1"}, {"shipping", "evt-1"}, {"billing", "evt-2"}} {
			created, err := h.Store.Put(ctx, letter(k[0], k[1]))
			require.NoError(t, err)
			require.True(t, created, "%v", k)
		}
	})

	t.Run("ConcurrentPutsKeepOneRow", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		var wg sync.WaitGroup
		created := make([]bool, 8)
		errs := make([]error, 8)
		for i := range 8 {
			wg.Go(func() { created[i], errs[i] = h.Store.Put(ctx, letter("billing", "evt-1")) })
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		n := 0
		for _, c := range created {
			if c {
				n++
			}
		}
		require.Equal(t, 1, n, "exactly one Put creates the row")
		got, err := h.Get(ctx, "billing", "evt-1")
		require.NoError(t, err)
		require.Equal(t, 8, got.Count)
	})

	t.Run("TopicStore", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ts, ok := h.Store.(dlq.TopicStore)
		if !ok {
			t.Skip("the store does not publish to a dead-letter topic (dlq.TopicStore)")
		}
		a, b := letter("billing", "evt-1"), letter("billing", "evt-2")
		for _, d := range []*dlq.DeadLetter{a, b} {
			_, err := h.Store.Put(ctx, d)
			require.NoError(t, err)
		}
		ids := func() []int64 {
			t.Helper()
			got, err := ts.Unpublished(ctx, 10)
			require.NoError(t, err)
			var out []int64
			for _, d := range got {
				out = append(out, d.ID)
			}
			return out
		}
		require.Equal(t, []int64{a.ID, b.ID}, ids(), "oldest first")
		got, err := ts.Unpublished(ctx, 1)
		require.NoError(t, err)
		require.Len(t, got, 1, "limit")
		require.Equal(t, letter("billing", "evt-1").Payload, got[0].Payload)

		require.NoError(t, ts.MarkPublished(ctx, a.ID))
		require.Equal(t, []int64{b.ID}, ids())
		_, err = h.Store.Put(ctx, letter("billing", "evt-1"))
		require.NoError(t, err)
		require.Equal(t, []int64{a.ID, b.ID}, ids(), "dead-lettered again: to be published again")
	})

	t.Run("GetMissing", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		_, err := h.Get(ctx, "nobody", "nothing")
		require.ErrorIs(t, err, dlq.ErrNotFound)
	})
}
