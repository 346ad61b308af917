package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

var _ middleware.DeadLetterBacklog = (*postgres.Store)(nil)

func TestPendingDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := testdb.Store(t)

	n, oldest, err := store.PendingDeadLetters(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.True(t, oldest.IsZero(), "no dead letter, no oldest")

	for _, id := range []string{"d1", "d2", "d3"} {
		_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: id, Reason: dlq.ReasonPermanent})
		require.NoError(t, err)
	}
	table := pgx.Identifier{store.Schema(), "dead_letters"}.Sanitize()
	at := time.Date(2021, 6, 7, 8, 9, 10, 123e6, time.UTC)
	_, err = pool.Exec(ctx, "UPDATE "+table+" SET dead_lettered_at = $1 WHERE event_id = 'd1'", at)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, "UPDATE "+table+" SET status = 'resolved', dead_lettered_at = $1 WHERE event_id = 'd3'", at.AddDate(-1, 0, 0))
	require.NoError(t, err)

	n, oldest, err = store.PendingDeadLetters(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "resolved dead letters are not pending")
	require.True(t, at.Equal(oldest), "oldest %s", oldest)
}
