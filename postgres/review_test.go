package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/internal/testdb"
)

func TestReviewConformance(t *testing.T) {
	t.Parallel()
	dlqtest.RunReview(t, func(t *testing.T) dlqtest.ReviewHarness {
		store, pool := testdb.Store(t)
		table := pgx.Identifier{store.Schema(), "dead_letters"}.Sanitize()
		var role string
		require.NoError(t, pool.QueryRow(context.Background(), "SELECT current_user").Scan(&role))
		return dlqtest.ReviewHarness{
			Store:    store,
			Reviewer: store,
			Backdate: func(ctx context.Context, id int64, at time.Time) error {
				_, err := pool.Exec(ctx, "UPDATE "+table+" SET dead_lettered_at = $2 WHERE id = $1", id, at)
				return err
			},
			RecordFailure: func(ctx context.Context, consumer, eventID string) (int, error) {
				return store.RecordFailure(ctx, dedup.Key{Consumer: consumer, EventID: eventID}, "boom")
			},
			DBRole: role,
		}
	})
}

// TestReviewAuditRollsBackWithTheChange shows the audit entry and the change commit
// together: when the audit insert fails, the dead letters keep their status.
func TestReviewAuditRollsBackWithTheChange(t *testing.T) {
	t.Parallel()
	store, pool := testdb.Store(t)
	ctx := t.Context()
	d := &dlq.DeadLetter{Consumer: "billing", EventID: "evt-1", Topic: "orders", Payload: []byte("{}"), Error: "boom", Reason: dlq.ReasonPermanent}
	_, err := store.Put(ctx, d)
	require.NoError(t, err)
	audit := pgx.Identifier{store.Schema(), "dead_letter_audit"}.Sanitize()
	_, err = pool.Exec(ctx, "ALTER TABLE "+audit+" ADD CONSTRAINT no_discards CHECK (action <> 'discard')")
	require.NoError(t, err)

	_, err = store.Discard(ctx, dlq.Change{IDs: []int64{d.ID}, Actor: dlq.Actor{OSUser: "ada"}, Reason: "r"})
	require.ErrorContains(t, err, "no_discards")
	rec, err := store.Get(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusPending, rec.Status)
}
