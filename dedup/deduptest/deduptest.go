// Package deduptest checks that a dedup.Store behaves as package dedup documents. Every
// store idem ships runs it, and so can any other implementation:
//
//	func TestConformance(t *testing.T) {
//		deduptest.Run(t, func(t *testing.T) deduptest.Harness { … })
//	}
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

// Harness is one fresh, empty store and a way to observe the effects written through
// the transactions it hands out.
type Harness struct {
	// Store is the store under test, empty.
	Store dedup.Store
	// Effect writes one effect row identified by id through the transaction that
	// Store.Run put in ctx.
	Effect func(ctx context.Context, id string) error
	// Effects counts the committed effect rows identified by id.
	Effects func(ctx context.Context, id string) (int, error)
	// PayloadHashes says the store keeps payload hashes (dedup.WithPayloadHash): the
	// suite then checks that it reports conflicting duplicates. A store that keeps
	// none is checked only to ignore them.
	PayloadHashes bool
	// Peer opens another value of the store on the same data, as another consumer
	// process would: the suite checks the crash guard's counts across processes with
	// it. Nil for a store that is no dedup.StartRecorder.
	Peer func(t *testing.T) dedup.Store
}

// Run runs the conformance suite. newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	ctx := context.Background()
	errBoom := errors.New("boom")

	effects := func(t *testing.T, h Harness, id string) int {
		t.Helper()
		n, err := h.Effects(ctx, id)
		require.NoError(t, err)
		return n
	}

	t.Run("FirstDeliveryRunsAndCommits", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		calls := 0
		claimed, err := h.Store.Run(ctx, key, func(ctx context.Context) error {
			calls++
			return h.Effect(ctx, "e1")
		})
		require.NoError(t, err)
		require.True(t, claimed)
		require.Equal(t, 1, calls)
		require.Equal(t, 1, effects(t, h, "e1"))
	})

	t.Run("DuplicateIsSkipped", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		for i := range 3 {
			claimed, err := h.Store.Run(ctx, key, func(ctx context.Context) error { return h.Effect(ctx, "e1") })
			require.NoError(t, err)
			require.Equal(t, i == 0, claimed, "delivery %d", i+1)
		}
		require.Equal(t, 1, effects(t, h, "e1"))
	})

	t.Run("FailureRollsBackClaimAndEffects", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		claimed, err := h.Store.Run(ctx, key, func(ctx context.Context) error {
			require.NoError(t, h.Effect(ctx, "e1"))
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		require.True(t, claimed, "a failed attempt is not a duplicate")
		require.Equal(t, 0, effects(t, h, "e1"), "the failed attempt's effect must roll back")

		claimed, err = h.Store.Run(ctx, key, func(ctx context.Context) error { return h.Effect(ctx, "e1") })
		require.NoError(t, err)
		require.True(t, claimed, "the redelivery after a failure must run again")
		require.Equal(t, 1, effects(t, h, "e1"))
	})

	t.Run("ConsumersAreIndependent", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		for _, c := range []string{"billing", "shipping"} {
			claimed, err := h.Store.Run(ctx, dedup.Key{Consumer: c, EventID: "e1"}, func(ctx context.Context) error {
				return h.Effect(ctx, c+"-e1")
			})
			require.NoError(t, err)
			require.True(t, claimed, "consumer %s", c)
		}
	})

	t.Run("ConcurrentDeliveriesApplyOnce", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		var ran, duplicates atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				claimed, err := h.Store.Run(ctx, key, func(ctx context.Context) error {
					ran.Add(1)
					return h.Effect(ctx, "e1")
				})
				if err != nil {
					errs <- err
					return
				}
				if !claimed {
					duplicates.Add(1)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, int32(1), ran.Load())
		require.Equal(t, int32(7), duplicates.Load())
		require.Equal(t, 1, effects(t, h, "e1"))
	})

	t.Run("ConcurrentWithAFailingFirstApplyOnce", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		var failOnce atomic.Bool
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				_, _ = h.Store.Run(ctx, key, func(ctx context.Context) error {
					if err := h.Effect(ctx, "e1"); err != nil {
						return err
					}
					if failOnce.CompareAndSwap(false, true) {
						return errBoom
					}
					return nil
				})
			})
		}
		wg.Wait()
		require.Equal(t, 1, effects(t, h, "e1"))
	})

	t.Run("RecordFailureCounts", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		a := dedup.Key{Consumer: "c", EventID: "a"}
		b := dedup.Key{Consumer: "c", EventID: "b"}
		for want := 1; want <= 3; want++ {
			n, err := h.Store.RecordFailure(ctx, a, fmt.Sprintf("failure %d", want))
			require.NoError(t, err)
			require.Equal(t, want, n)
		}
		n, err := h.Store.RecordFailure(ctx, b, "other")
		require.NoError(t, err)
		require.Equal(t, 1, n, "counts are per key")
		n, err = h.Store.RecordFailure(ctx, dedup.Key{Consumer: "d", EventID: "a"}, "other consumer")
		require.NoError(t, err)
		require.Equal(t, 1, n, "counts are per consumer")
	})

	t.Run("RecordFailureIsConcurrencySafe", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range 8 {
			wg.Go(func() {
				_, errs[i] = h.Store.RecordFailure(ctx, key, "boom")
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		n, err := h.Store.RecordFailure(ctx, key, "boom")
		require.NoError(t, err)
		require.Equal(t, 9, n)
	})

	t.Run("CancelledContextRunsNothing", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		called := false
		_, err := h.Store.Run(cctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error {
			called = true
			return nil
		})
		require.Error(t, err)
		require.False(t, called)
		claimed, err := h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(ctx context.Context) error {
			return h.Effect(ctx, "e1")
		})
		require.NoError(t, err)
		require.True(t, claimed, "a cancelled attempt must not leave a claim behind")
	})

	t.Run("StartRecorder", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		sr, ok := h.Store.(dedup.StartRecorder)
		if !ok {
			t.Skip("the store has no crash guard (dedup.StartRecorder)")
		}
		require.NotNil(t, h.Peer, "a StartRecorder's harness must give Peer")
		peer, ok := h.Peer(t).(dedup.StartRecorder)
		require.True(t, ok, "the peer must be a StartRecorder too")
		start := func(sr dedup.StartRecorder, key dedup.Key) int {
			t.Helper()
			n, err := sr.StartAttempt(ctx, key)
			require.NoError(t, err)
			return n
		}
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		for range 3 {
			require.Equal(t, 1, start(sr, key), "a process's own starts are never its crashes")
		}
		require.Equal(t, 2, start(peer, key), "another process's unfinished starts are one crash of it, however many they are")
		require.Equal(t, 2, start(peer, key), "the peer's own starts do not count for it")
		require.Equal(t, 2, start(sr, key), "the peer's starts count once for the first process")
		require.NoError(t, sr.FinishAttempt(ctx, key))
		require.Equal(t, 1, start(peer, key), "a finished delivery forgets every process's starts")
		require.Equal(t, 2, start(sr, key))
		require.Equal(t, 1, start(sr, dedup.Key{Consumer: "other", EventID: "e1"}), "counts are per consumer")

		claimed, err := h.Store.Run(ctx, key, func(ctx context.Context) error { return h.Effect(ctx, "e1") })
		require.NoError(t, err)
		require.True(t, claimed)
		require.Zero(t, start(sr, key), "a processed event is never counted as crashing")
		require.Zero(t, start(peer, key), "a processed event is never counted as crashing")

		livePeer, ok := peer.(dedup.LiveStartRecorder)
		if !ok {
			return
		}
		// While a process holds its liveness, its unfinished starts are deliveries
		// still running, never crashes; once it lets go, they are.
		key = dedup.Key{Consumer: "c", EventID: "e2"}
		release, err := livePeer.HoldLive(ctx)
		require.NoError(t, err)
		again, err := livePeer.HoldLive(ctx)
		require.NoError(t, err, "holds nest")
		require.Equal(t, 1, start(peer, key))
		require.Equal(t, 1, start(peer, key))
		require.Equal(t, 1, start(sr, key), "the starts of a process that runs are no crashes")
		again()
		again() // safe to call twice
		require.Equal(t, 1, start(sr, key), "one hold is still taken")
		release()
		if c, ok := peer.(interface{ Close() }); ok {
			c.Close() // the process is gone
		} else if c, ok := peer.(interface{ Close() error }); ok {
			require.NoError(t, c.Close())
		}
		require.Eventually(t, func() bool { return start(sr, key) == 2 }, 10*time.Second, 20*time.Millisecond,
			"the starts of a process that let go of its liveness are crashes")
	})

	t.Run("ConflictingDuplicates", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		noop := func(context.Context) error { return nil }
		first, other := dedup.HashPayload([]byte("first")), dedup.HashPayload([]byte("other"))
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		claimed, err := h.Store.Run(dedup.WithPayloadHash(ctx, first), key, noop)
		require.NoError(t, err)
		require.True(t, claimed)

		claimed, err = h.Store.Run(dedup.WithPayloadHash(ctx, first), key, noop)
		require.NoError(t, err, "a duplicate with the same payload is no conflict")
		require.False(t, claimed)
		claimed, err = h.Store.Run(ctx, key, noop)
		require.NoError(t, err, "a duplicate without a hash is no conflict")
		require.False(t, claimed)

		claimed, err = h.Store.Run(dedup.WithPayloadHash(ctx, other), key, noop)
		require.False(t, claimed, "a conflicting duplicate is skipped all the same")
		if !h.PayloadHashes {
			require.NoError(t, err)
			return
		}
		var conflict *dedup.ConflictingDuplicateError
		require.ErrorAs(t, err, &conflict)
		require.ErrorIs(t, err, dedup.ErrConflictingDuplicate)
		require.Equal(t, key, conflict.Key)
		require.Equal(t, first, conflict.Kept)
		require.Equal(t, other, conflict.Got)

		// An event claimed without a hash has none to conflict with.
		bare := dedup.Key{Consumer: "c", EventID: "e2"}
		_, err = h.Store.Run(ctx, bare, noop)
		require.NoError(t, err)
		claimed, err = h.Store.Run(dedup.WithPayloadHash(ctx, other), bare, noop)
		require.NoError(t, err)
		require.False(t, claimed)
	})

	runBatch(t, newHarness)
	runOrdering(t, newHarness)
	runQuarantine(t, newHarness)
	runParker(t, newHarness)

	t.Run("LongAndUnicodeIDs", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		for _, id := range []string{"ünïcødé-✓", fmt.Sprintf("%0200d", 7)} {
			claimed, err := h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: id}, func(ctx context.Context) error { return nil })
			require.NoError(t, err)
			require.True(t, claimed)
			claimed, err = h.Store.Run(ctx, dedup.Key{Consumer: "c", EventID: id}, func(ctx context.Context) error { return nil })
			require.NoError(t, err)
			require.False(t, claimed)
		}
	})
}
