package deduptest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
)

// runBatch checks a store's dedup.BatchRunner, when it has one.
func runBatch(t *testing.T, newHarness func(t *testing.T) Harness) {
	ctx := context.Background()
	errBoom := errors.New("boom")

	setup := func(t *testing.T) (Harness, dedup.BatchRunner) {
		t.Helper()
		h := newHarness(t)
		br, ok := h.Store.(dedup.BatchRunner)
		if !ok {
			t.Skipf("%T does not run batches (dedup.BatchRunner)", h.Store)
		}
		return h, br
	}
	// item is an attempt that writes one effect row, then returns err.
	item := func(h Harness, id string, err error) *dedup.BatchItem {
		return &dedup.BatchItem{Ctx: ctx, Key: dedup.Key{Consumer: "c", EventID: id}, Fn: func(ctx context.Context) error {
			if werr := h.Effect(ctx, id); werr != nil {
				return werr
			}
			return err
		}}
	}
	effects := func(t *testing.T, h Harness, id string) int {
		t.Helper()
		n, err := h.Effects(ctx, id)
		require.NoError(t, err)
		return n
	}

	t.Run("BatchCommitsTheNeighboursOfAFailure", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		items := []*dedup.BatchItem{item(h, "e1", nil), item(h, "e2", errBoom), item(h, "e3", nil)}
		br.RunBatch(ctx, items)
		for i, it := range items {
			require.True(t, it.Claimed, "item %d", i)
		}
		require.NoError(t, items[0].Err)
		require.ErrorIs(t, items[1].Err, errBoom, "the handler's error, unchanged")
		require.NoError(t, items[2].Err)
		require.Equal(t, 1, effects(t, h, "e1"))
		require.Zero(t, effects(t, h, "e2"), "the failing event's writes roll back alone")
		require.Equal(t, 1, effects(t, h, "e3"))

		claimed, err := h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e2"}, func(ctx context.Context) error { return h.Effect(ctx, "e2") })
		require.NoError(t, err)
		require.True(t, claimed, "the failing event's claim rolled back with it")
		claimed, err = h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
		require.NoError(t, err)
		require.False(t, claimed, "the neighbours' claims committed")
	})

	t.Run("BatchDuplicates", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		_, err := h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(ctx context.Context) error { return h.Effect(ctx, "e1") })
		require.NoError(t, err)
		items := []*dedup.BatchItem{item(h, "e1", nil), item(h, "e2", nil), item(h, "e2", nil), item(h, "e3", nil)}
		br.RunBatch(ctx, items)
		for i, want := range []bool{false, true, false, true} {
			require.NoError(t, items[i].Err, "item %d", i)
			require.Equal(t, want, items[i].Claimed, "item %d", i)
		}
		require.Equal(t, 1, effects(t, h, "e1"), "a duplicate of a committed event is not run")
		require.Equal(t, 1, effects(t, h, "e2"), "a duplicate inside the batch is not run")
		require.Equal(t, 1, effects(t, h, "e3"))

		again := []*dedup.BatchItem{item(h, "e2", nil), item(h, "e3", nil)}
		br.RunBatch(ctx, again)
		require.False(t, again[0].Claimed)
		require.False(t, again[1].Claimed, "duplicates across batches")
		require.Equal(t, 1, effects(t, h, "e3"))
	})

	t.Run("BatchOfSeveralConsumers", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		a, b := item(h, "e1", nil), item(h, "e1", nil)
		b.Key.Consumer = "d"
		br.RunBatch(ctx, []*dedup.BatchItem{a, b})
		require.True(t, a.Claimed)
		require.True(t, b.Claimed, "the same event ID of another consumer is another event")
		require.Equal(t, 2, effects(t, h, "e1"))
	})

	t.Run("BatchConflictingDuplicates", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		first, other := dedup.HashPayload([]byte("first")), dedup.HashPayload([]byte("other"))
		_, err := h.Store.Run(dedup.WithPayloadHash(ctx, first), dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
		require.NoError(t, err)
		same, conflicting, inBatch, inBatchDup := item(h, "e1", nil), item(h, "e1", nil), item(h, "e2", nil), item(h, "e2", nil)
		same.Ctx = dedup.WithPayloadHash(ctx, first)
		conflicting.Ctx = dedup.WithPayloadHash(ctx, other)
		inBatch.Ctx = dedup.WithPayloadHash(ctx, first)
		inBatchDup.Ctx = dedup.WithPayloadHash(ctx, other)
		br.RunBatch(ctx, []*dedup.BatchItem{same, conflicting, inBatch, inBatchDup})
		require.NoError(t, same.Err)
		require.False(t, same.Claimed)
		require.True(t, inBatch.Claimed)
		require.NoError(t, inBatch.Err)
		for _, it := range []*dedup.BatchItem{conflicting, inBatchDup} {
			require.False(t, it.Claimed)
			if !h.PayloadHashes {
				require.NoError(t, it.Err)
				continue
			}
			require.ErrorIs(t, it.Err, dedup.ErrConflictingDuplicate, it.Key.EventID)
		}
	})

	t.Run("BatchSkipsEndedDeliveries", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		ended := item(h, "e1", nil)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		ended.Ctx = cctx
		ok := item(h, "e2", nil)
		br.RunBatch(ctx, []*dedup.BatchItem{ended, ok})
		require.ErrorIs(t, ended.Err, context.Canceled)
		require.False(t, ended.Claimed)
		require.Zero(t, effects(t, h, "e1"))
		require.True(t, ok.Claimed)
		require.NoError(t, ok.Err)
		claimed, err := h.Store.Run(ctx, ended.Key, func(context.Context) error { return nil })
		require.NoError(t, err)
		require.True(t, claimed, "an ended delivery leaves no claim behind")
	})

	t.Run("BatchOfMany", func(t *testing.T) {
		t.Parallel()
		h, br := setup(t)
		items := make([]*dedup.BatchItem, 100)
		for i := range items {
			var err error
			if i%10 == 3 {
				err = errBoom
			}
			items[i] = item(h, fmt.Sprintf("e%d", i), err)
		}
		br.RunBatch(ctx, items)
		for i, it := range items {
			require.True(t, it.Claimed, "item %d", i)
			want := 1
			if i%10 == 3 {
				require.ErrorIs(t, it.Err, errBoom)
				want = 0
			} else {
				require.NoError(t, it.Err, "item %d", i)
			}
			require.Equal(t, want, effects(t, h, it.Key.EventID), "item %d", i)
		}
	})
}
