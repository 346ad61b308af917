package outbox_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/outbox"
)

// TestAssignSequence: with Config.AssignSequence, PublishTx numbers each entity's
// events 1, 2, 3, … in the caller's transaction: per entity, without gaps when a
// transaction rolls back, and without duplicates when transactions publish for one
// entity at once. A number the message carries already is kept.
func TestAssignSequence(t *testing.T) {
	t.Parallel()
	pool, cfg := setup(t)
	store, _ := testdb.Store(t)
	cfg.AssignSequence, cfg.Schema = true, store.Schema()
	ctx := context.Background()
	entityEvent := func(id, entity string) *message.Message {
		msg := event(id)
		msg.Metadata.Set(dedup.EntityIDKey, entity)
		return msg
	}
	seq := func(msg *message.Message) int64 {
		n, err := strconv.ParseInt(msg.Metadata.Get(dedup.EntitySeqKey), 10, 64)
		require.NoError(t, err)
		return n
	}
	publishErr := func(commit bool, msgs ...*message.Message) error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		if err := outbox.PublishTx(ctx, tx, cfg, "orders", msgs...); err != nil || !commit {
			return err
		}
		return tx.Commit(ctx)
	}
	publish := func(commit bool, msgs ...*message.Message) {
		t.Helper()
		require.NoError(t, publishErr(commit, msgs...))
	}

	a1, a2, b1 := entityEvent("a1", "order:A"), entityEvent("a2", "order:A"), entityEvent("b1", "order:B")
	plain := event("p1")
	publish(true, a1, a2, b1, plain)
	require.Equal(t, []int64{1, 2, 1}, []int64{seq(a1), seq(a2), seq(b1)})
	require.Empty(t, plain.Metadata.Get(dedup.EntitySeqKey), "a message without an entity gets no number")

	publish(false, entityEvent("lost", "order:A")) // rolled back: its number is taken back
	a3 := entityEvent("a3", "order:A")
	publish(true, a3)
	require.Equal(t, int64(3), seq(a3), "no gap after a rollback")

	kept := entityEvent("k", "order:A")
	kept.Metadata.Set(dedup.EntitySeqKey, "40")
	publish(true, kept)
	require.Equal(t, int64(40), seq(kept), "a number set by the producer is kept")

	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []int64
	for i := range 8 {
		wg.Go(func() {
			msg := entityEvent("c"+strconv.Itoa(i), "order:A")
			if err := publishErr(true, msg); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got = append(got, seq(msg))
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(got)
	require.Equal(t, []int64{4, 5, 6, 7, 8, 9, 10, 11}, got, "concurrent publishers get distinct numbers, without gaps")

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	require.ErrorIs(t, outbox.PublishTx(ctx, tx, cfg, "orders", entityEvent("bad", "a\x00b")), dedup.ErrInvalidEventID)
}
