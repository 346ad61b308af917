package deduptest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

// quarantineStore is what the quarantine checks need of a store.
type quarantineStore interface {
	dedup.Quarantiner
	dedup.Parker
	dlq.Store
	dlq.Reviewer
}

// runQuarantine checks a store's dedup.Quarantiner, when it has one, together with the
// review of the dead letter an entity is quarantined behind.
func runQuarantine(t *testing.T, newHarness func(t *testing.T) Harness) {
	ctx := context.Background()

	setup := func(t *testing.T) (Harness, quarantineStore) {
		t.Helper()
		h := newHarness(t)
		qs, ok := h.Store.(quarantineStore)
		if !ok {
			t.Skipf("%T does not quarantine entities, park messages and review dead letters", h.Store)
		}
		return h, qs
	}
	// deliver runs event id, sequence seq of entity under the strict policy, parking it
	// when its entity is quarantined; ran reports whether fn ran.
	deliver := func(h Harness, entity, id string, seq int64) (ran bool, err error) {
		rctx := dedup.WithEntity(ctx, dedup.Entity{ID: entity, Seq: seq}, dedup.GapStrict)
		rctx = dedup.WithParking(rctx, dedup.Parked{Key: dedup.Key{Consumer: "c", EventID: id}, Topic: "orders",
			Payload: []byte("payload " + id), Metadata: map[string]string{"event_id": id}})
		_, err = h.Store.Run(rctx, dedup.Key{Consumer: "c", EventID: id}, func(ctx context.Context) error {
			ran = true
			return h.Effect(ctx, id)
		})
		return ran, err
	}
	// poison dead-letters event id, sequence seq of entity, and quarantines it.
	poison := func(t *testing.T, qs quarantineStore, entity, id string, seq int64) int64 {
		t.Helper()
		d := &dlq.DeadLetter{Consumer: "c", EventID: id, Topic: "orders", Payload: []byte("x"), Metadata: map[string]string{},
			Reason: dlq.ReasonPermanent, Error: "boom", Fingerprint: "f", Attempts: 1}
		_, err := qs.Put(ctx, d)
		require.NoError(t, err)
		require.NoError(t, qs.Quarantine(ctx, dedup.Key{Consumer: "c", EventID: id}, dedup.Entity{ID: entity, Seq: seq}))
		return d.ID
	}
	// parkBehind applies event 1 of entity, dead-letters event 2, and parks 3 and 4.
	parkBehind := func(t *testing.T, h Harness, qs quarantineStore, entity string) int64 {
		t.Helper()
		_, err := deliver(h, entity, entity+"-1", 1)
		require.NoError(t, err)
		id := poison(t, qs, entity, entity+"-2", 2)
		for _, seq := range []int64{4, 3, 4} {
			ran, err := deliver(h, entity, fmt.Sprintf("%s-%d", entity, seq), seq)
			require.ErrorIs(t, err, dedup.ErrQuarantined, "seq %d", seq)
			var q *dedup.QuarantinedError
			require.ErrorAs(t, err, &q)
			require.Equal(t, entity+"-2", q.BlockedBy)
			require.Equal(t, int64(2), q.BlockedSeq)
			require.False(t, ran, "a parked event does not run")
		}
		rec, err := qs.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, 2, rec.Parked, "each event parked once")
		return id
	}
	// released takes the entity's released events from the delayed retries.
	released := func(t *testing.T, qs quarantineStore, want int) []dedup.Parked {
		t.Helper()
		var got []dedup.Parked
		require.Eventually(t, func() bool {
			_, err := qs.TakeDue(ctx, 10, func(_ context.Context, p dedup.Parked) error {
				got = append(got, p)
				return nil
			})
			return err == nil && len(got) >= want
		}, 5*time.Second, 5*time.Millisecond)
		require.Len(t, got, want)
		return got
	}
	mark := func(t *testing.T, qs quarantineStore, entity string) int64 {
		t.Helper()
		m, err := qs.Mark(ctx, "c", entity)
		require.NoError(t, err)
		return m
	}

	t.Run("QuarantineParksAndReplayReleasesInOrder", func(t *testing.T) {
		t.Parallel()
		h, qs := setup(t)
		id := parkBehind(t, h, qs, "a")
		require.Equal(t, int64(1), mark(t, qs, "a"))
		// Without a message to park, an event waits on the gap as before.
		_, err := h.Store.Run(dedup.WithEntity(ctx, dedup.Entity{ID: "a", Seq: 5}, dedup.GapStrict),
			dedup.Key{Consumer: "c", EventID: "a-5"}, func(context.Context) error { return nil })
		require.ErrorIs(t, err, dedup.ErrGap)

		_, err = qs.Discard(ctx, dlq.Change{IDs: []int64{id}, Reason: "no"})
		require.ErrorIs(t, err, dlq.ErrParkedChoiceRequired, "discarding needs a choice for the parked events")
		rec, err := qs.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, dlq.StatusPending, rec.Status, "the refused discard changed nothing")

		entry, err := qs.Replay(ctx, dlq.Change{IDs: []int64{id}, Selector: "ids"}, func() error { return nil })
		require.NoError(t, err)
		require.Equal(t, "ids parked=release:2", entry.Selector, "the audit records the release")
		got := released(t, qs, 2)
		require.Equal(t, "a-3", got[0].Key.EventID, "released in sequence order")
		require.Equal(t, "a-4", got[1].Key.EventID)
		require.Equal(t, "orders", got[0].Topic)
		require.Equal(t, []byte("payload a-3"), got[0].Payload)
		require.Equal(t, map[string]string{"event_id": "a-3"}, got[0].Metadata)
		require.Equal(t, int64(1), mark(t, qs, "a"), "a replay leaves the mark to the replayed event")

		// The quarantine is lifted: the replayed event applies, then the released ones.
		for seq := int64(2); seq <= 4; seq++ {
			ran, err := deliver(h, "a", fmt.Sprintf("a-%d", seq), seq)
			require.NoError(t, err)
			require.True(t, ran)
		}
		require.Equal(t, int64(4), mark(t, qs, "a"))
	})

	t.Run("QuarantineResolveMovesTheMarkPastIt", func(t *testing.T) {
		t.Parallel()
		h, qs := setup(t)
		id := parkBehind(t, h, qs, "b")
		_, err := qs.Resolve(ctx, dlq.Change{IDs: []int64{id}})
		require.NoError(t, err)
		require.Equal(t, int64(2), mark(t, qs, "b"), "resolved: its event will not come again")
		require.Len(t, released(t, qs, 2), 2)
		ran, err := deliver(h, "b", "b-3", 3)
		require.NoError(t, err)
		require.True(t, ran)
	})

	t.Run("QuarantineDiscardReleasesOrDiscards", func(t *testing.T) {
		t.Parallel()
		h, qs := setup(t)
		id := parkBehind(t, h, qs, "c")
		entry, err := qs.Discard(ctx, dlq.Change{IDs: []int64{id}, Reason: "obsolete", Parked: dlq.ParkedDiscard})
		require.NoError(t, err)
		require.Equal(t, "parked=discard:2", entry.Selector)
		require.Equal(t, int64(4), mark(t, qs, "c"), "the mark moves past the discarded events")
		n, err := qs.TakeDue(ctx, 10, func(context.Context, dedup.Parked) error { return nil })
		require.NoError(t, err)
		require.Zero(t, n, "nothing released")
		rec, err := qs.Get(ctx, id)
		require.NoError(t, err)
		require.Zero(t, rec.Parked)

		id = parkBehind(t, h, qs, "d")
		_, err = qs.Discard(ctx, dlq.Change{IDs: []int64{id}, Reason: "obsolete", Parked: dlq.ParkedRelease})
		require.NoError(t, err)
		require.Equal(t, int64(2), mark(t, qs, "d"), "the mark moves past the discarded event only")
		require.Len(t, released(t, qs, 2), 2)
	})

	t.Run("QuarantineBelowTheBlockRuns", func(t *testing.T) {
		t.Parallel()
		h, qs := setup(t)
		poison(t, qs, "e", "e-3", 3) // a gap dead letter: events 1 and 2 never came
		for seq := int64(1); seq <= 2; seq++ {
			ran, err := deliver(h, "e", fmt.Sprintf("e-%d", seq), seq)
			require.NoError(t, err, "seq %d is before the dead letter", seq)
			require.True(t, ran)
		}
		_, err := deliver(h, "e", "e-4", 4)
		require.ErrorIs(t, err, dedup.ErrQuarantined)
	})
}
