package postgres_test

import (
	"context"
	"fmt"
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

// TestReviewCountsAnEventParkedMeanwhile: a consumer parking an event behind a dead
// letter holds the entity's mark while the dead letter is reviewed: the review waits
// for it and counts the event with the others, so that a discard without a choice is
// refused and the audit's count is right.
func TestReviewCountsAnEventParkedMeanwhile(t *testing.T) {
	t.Parallel()
	store, pool := testdb.Store(t)
	ctx := t.Context()
	marks := pgx.Identifier{store.Schema(), "entity_marks"}.Sanitize()
	parked := pgx.Identifier{store.Schema(), "parked_events"}.Sanitize()
	park := func(tx pgx.Tx, eventID string, seq int) {
		t.Helper()
		_, err := tx.Exec(ctx, "INSERT INTO "+parked+" (consumer, event_id, entity_id, seq, topic, payload, metadata) VALUES ('billing', $1, 'A', $2, 'orders', '\\x7b7d', '{}')", eventID, seq)
		require.NoError(t, err)
	}
	d := &dlq.DeadLetter{Consumer: "billing", EventID: "A-3", Topic: "orders", Payload: []byte("{}"), Error: "boom", Reason: dlq.ReasonPermanent}
	_, err := store.Put(ctx, d)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "INSERT INTO "+marks+" (consumer, entity_id, seq, blocked_by, blocked_seq) VALUES ('billing', 'A', 2, 'A-3', 3)")
	require.NoError(t, err)

	for _, tt := range []struct {
		name  string
		parks int    // the sequence number of the event parked meanwhile
		want  string // the audit selector
	}{
		{"DiscardWithoutAChoice", 4, ""}, // refused: A-4 is counted
		{"Resolve", 5, "ids parked=release:2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The consumer parking the event holds A's mark, as the park statement does.
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx) //nolint:errcheck
			_, err = tx.Exec(ctx, "SELECT 1 FROM "+marks+" WHERE consumer = 'billing' AND entity_id = 'A' FOR UPDATE")
			require.NoError(t, err)
			park(tx, fmt.Sprintf("A-%d", tt.parks), tt.parks)

			type result struct {
				entry dlq.AuditEntry
				err   error
			}
			done := make(chan result, 1)
			go func() {
				review := store.Resolve
				if tt.name == "DiscardWithoutAChoice" {
					review = store.Discard
				}
				entry, err := review(ctx, dlq.Change{IDs: []int64{d.ID}, Reason: "r", Selector: "ids"})
				done <- result{entry, err}
			}()
			select {
			case r := <-done:
				t.Fatalf("the review did not wait for the mark: %+v", r)
			case <-time.After(200 * time.Millisecond):
			}
			require.NoError(t, tx.Commit(ctx))
			r := <-done
			if tt.name == "DiscardWithoutAChoice" {
				require.ErrorIs(t, r.err, dlq.ErrParkedChoiceRequired)
				rec, err := store.Get(ctx, d.ID)
				require.NoError(t, err)
				require.Equal(t, dlq.StatusPending, rec.Status, "a refused discard changes nothing")
				require.Equal(t, 1, rec.Parked)
				return
			}
			require.NoError(t, r.err)
			require.Equal(t, tt.want, r.entry.Selector)
		})
	}
}
