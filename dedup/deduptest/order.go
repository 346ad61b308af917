package deduptest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
)

// runOrdering checks a store's dedup.Sequencer, when it has one.
func runOrdering(t *testing.T, newHarness func(t *testing.T) Harness) {
	ctx := context.Background()
	errBoom := errors.New("boom")

	setup := func(t *testing.T) (Harness, dedup.Sequencer) {
		t.Helper()
		h := newHarness(t)
		sq, ok := h.Store.(dedup.Sequencer)
		if !ok {
			t.Skipf("%T does not order events (dedup.Sequencer)", h.Store)
		}
		return h, sq
	}
	// deliver runs event id, sequence seq of entity "a", writing one effect row.
	deliver := func(h Harness, id string, seq int64, gap dedup.GapPolicy, ran *int) (bool, error) {
		rctx := dedup.WithEntity(ctx, dedup.Entity{ID: "a", Seq: seq}, gap)
		return h.Store.Run(rctx, dedup.Key{Consumer: "c", EventID: id}, func(ctx context.Context) error {
			if ran != nil {
				*ran++
			}
			return h.Effect(ctx, id)
		})
	}
	mark := func(t *testing.T, sq dedup.Sequencer, entity string) int64 {
		t.Helper()
		m, err := sq.Mark(ctx, "c", entity)
		require.NoError(t, err)
		return m
	}
	effects := func(t *testing.T, h Harness, id string) int {
		t.Helper()
		n, err := h.Effects(ctx, id)
		require.NoError(t, err)
		return n
	}

	t.Run("OrderingInSequenceMovesTheMark", func(t *testing.T) {
		t.Parallel()
		h, sq := setup(t)
		require.Zero(t, mark(t, sq, "a"), "no event applied yet")
		for _, gap := range []dedup.GapPolicy{dedup.GapApply, dedup.GapStrict} {
			for seq := int64(1); seq <= 3; seq++ {
				id := fmt.Sprintf("%s-%d", gap, seq)
				if gap == dedup.GapStrict {
					seq += 3
				}
				claimed, err := deliver(h, id, seq, gap, nil)
				require.NoError(t, err)
				require.True(t, claimed)
				require.Equal(t, seq, mark(t, sq, "a"))
				require.Equal(t, 1, effects(t, h, id))
			}
		}
		require.Zero(t, mark(t, sq, "b"), "marks are per entity")
	})

	t.Run("OrderingStaleEventIsSkipped", func(t *testing.T) {
		t.Parallel()
		h, sq := setup(t)
		_, err := deliver(h, "e5", 5, dedup.GapApply, nil)
		require.NoError(t, err)
		for _, seq := range []int64{3, 5} {
			ran := 0
			claimed, err := deliver(h, fmt.Sprintf("old-%d", seq), seq, dedup.GapApply, &ran)
			require.False(t, claimed)
			var stale *dedup.StaleEventError
			require.ErrorAs(t, err, &stale)
			require.ErrorIs(t, err, dedup.ErrStaleEvent)
			require.Equal(t, int64(5), stale.Mark)
			require.Equal(t, dedup.Entity{ID: "a", Seq: seq}, stale.Entity)
			require.Zero(t, ran, "the handler does not run for a stale event")
			require.Zero(t, effects(t, h, stale.Key.EventID))
		}
		require.Equal(t, int64(5), mark(t, sq, "a"))
		// The stale event's claim rolled back: it is stale again, not a duplicate.
		_, err = deliver(h, "old-3", 3, dedup.GapApply, nil)
		require.ErrorIs(t, err, dedup.ErrStaleEvent)
	})

	t.Run("OrderingDuplicateIsADuplicateNotStale", func(t *testing.T) {
		t.Parallel()
		h, _ := setup(t)
		_, err := deliver(h, "e1", 1, dedup.GapApply, nil)
		require.NoError(t, err)
		claimed, err := deliver(h, "e1", 1, dedup.GapApply, nil)
		require.NoError(t, err)
		require.False(t, claimed)
	})

	t.Run("OrderingApplyJumpsAGap", func(t *testing.T) {
		t.Parallel()
		h, sq := setup(t)
		claimed, err := deliver(h, "e7", 7, dedup.GapApply, nil)
		require.NoError(t, err)
		require.True(t, claimed)
		require.Equal(t, int64(7), mark(t, sq, "a"))
	})

	t.Run("OrderingStrictGapWaits", func(t *testing.T) {
		t.Parallel()
		h, sq := setup(t)
		var open []*dedup.GapError
		for range 2 {
			ran := 0
			claimed, err := deliver(h, "e2", 2, dedup.GapStrict, &ran)
			require.False(t, claimed)
			var g *dedup.GapError
			require.ErrorAs(t, err, &g)
			require.ErrorIs(t, err, dedup.ErrGap)
			require.Zero(t, ran)
			require.Zero(t, g.Mark)
			require.GreaterOrEqual(t, g.Open, time.Duration(0))
			open = append(open, g)
		}
		require.GreaterOrEqual(t, open[1].Open, open[0].Open, "the gap is measured from when it was first seen")
		require.Zero(t, effects(t, h, "e2"))
		require.Zero(t, mark(t, sq, "a"))

		_, err := deliver(h, "e1", 1, dedup.GapStrict, nil)
		require.NoError(t, err)
		claimed, err := deliver(h, "e2", 2, dedup.GapStrict, nil)
		require.NoError(t, err, "the gap closed")
		require.True(t, claimed)
		require.Equal(t, int64(2), mark(t, sq, "a"))
		require.Equal(t, 1, effects(t, h, "e2"))
	})

	t.Run("OrderingFailureLeavesTheMark", func(t *testing.T) {
		t.Parallel()
		h, sq := setup(t)
		rctx := dedup.WithEntity(ctx, dedup.Entity{ID: "a", Seq: 1}, dedup.GapStrict)
		claimed, err := h.Store.Run(rctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(ctx context.Context) error {
			if err := h.Effect(ctx, "e1"); err != nil {
				return err
			}
			return errBoom
		})
		require.True(t, claimed)
		require.ErrorIs(t, err, errBoom)
		require.Zero(t, mark(t, sq, "a"), "the mark rolls back with the attempt")
		claimed, err = deliver(h, "e1", 1, dedup.GapStrict, nil)
		require.NoError(t, err)
		require.True(t, claimed)
		require.Equal(t, int64(1), mark(t, sq, "a"))
	})

	// Events of one entity delivered at the same time are decided one after the
	// other: the handler never runs for two of them at once, the applied ones are in
	// increasing order, and the mark ends at the highest.
	for _, gap := range []dedup.GapPolicy{dedup.GapApply, dedup.GapStrict} {
		t.Run("OrderingConcurrentEventsOfOneEntity/"+gap.String(), func(t *testing.T) {
			t.Parallel()
			h, sq := setup(t)
			const n = 12
			var (
				mu      sync.Mutex
				applied []int64
				inside  atomic.Int32
				overlap atomic.Bool
				wg      sync.WaitGroup
			)
			for seq := int64(1); seq <= n; seq++ {
				wg.Go(func() {
					rctx := dedup.WithEntity(ctx, dedup.Entity{ID: "a", Seq: seq}, gap)
					for {
						_, err := h.Store.Run(rctx, dedup.Key{Consumer: "c", EventID: fmt.Sprint(seq)}, func(ctx context.Context) error {
							if inside.Add(1) > 1 {
								overlap.Store(true)
							}
							defer inside.Add(-1)
							mu.Lock()
							applied = append(applied, seq)
							mu.Unlock()
							return h.Effect(ctx, fmt.Sprint(seq))
						})
						if !errors.Is(err, dedup.ErrGap) {
							require.True(t, err == nil || errors.Is(err, dedup.ErrStaleEvent), "seq %d: %v", seq, err)
							return
						}
					}
				})
			}
			wg.Wait()
			require.False(t, overlap.Load(), "two events of one entity ran at once")
			require.IsIncreasing(t, applied)
			require.Equal(t, int64(n), mark(t, sq, "a"))
			if gap == dedup.GapStrict {
				require.Len(t, applied, n, "strict applies every event, in order")
			}
		})
	}
}
