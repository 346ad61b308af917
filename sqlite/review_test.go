package sqlite_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/sqlite"
)

func TestReviewConformance(t *testing.T) {
	t.Parallel()
	dlqtest.RunReview(t, func(t *testing.T) dlqtest.ReviewHarness {
		store := testStore(t, sqlite.Config{})
		return dlqtest.ReviewHarness{
			Store:    store,
			Reviewer: store,
			Backdate: func(ctx context.Context, id int64, at time.Time) error {
				_, err := store.DB().ExecContext(ctx, "UPDATE dead_letters SET dead_lettered_at = ?2 WHERE id = ?1",
					id, at.UTC().Format("2006-01-02T15:04:05.000Z"))
				return err
			},
			RecordFailure: func(ctx context.Context, consumer, eventID string) (int, error) {
				return store.RecordFailure(ctx, dedup.Key{Consumer: consumer, EventID: eventID}, "boom")
			},
			DBRole: "sqlite",
		}
	})
}

// TestReviewAuditRollsBackWithTheChange shows the audit entry and the change commit
// together: when the audit insert fails, the dead letters keep their status.
func TestReviewAuditRollsBackWithTheChange(t *testing.T) {
	t.Parallel()
	store := testStore(t, sqlite.Config{})
	ctx := t.Context()
	d := &dlq.DeadLetter{Consumer: "billing", EventID: "evt-1", Topic: "orders", Payload: []byte("{}"), Error: "boom", Reason: dlq.ReasonPermanent}
	_, err := store.Put(ctx, d)
	require.NoError(t, err)
	_, err = store.DB().ExecContext(ctx, `CREATE TRIGGER no_discards BEFORE INSERT ON dead_letter_audit
WHEN NEW.action = 'discard' BEGIN SELECT RAISE(ABORT, 'no_discards'); END`)
	require.NoError(t, err)

	_, err = store.Discard(ctx, dlq.Change{IDs: []int64{d.ID}, Actor: dlq.Actor{OSUser: "ada"}, Reason: "r"})
	require.ErrorContains(t, err, "no_discards")
	rec, err := store.Get(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, dlq.StatusPending, rec.Status)
}
