package sqlite_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/sqlite"
)

var _ middleware.DeadLetterBacklog = (*sqlite.Store)(nil)

func TestPendingDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := testStore(t, sqlite.Config{})

	n, oldest, err := store.PendingDeadLetters(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.True(t, oldest.IsZero(), "no dead letter, no oldest")

	for _, id := range []string{"d1", "d2", "d3"} {
		_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: id, Reason: dlq.ReasonPermanent})
		require.NoError(t, err)
	}
	exec(t, store.DB(), "UPDATE dead_letters SET dead_lettered_at = '2021-06-07T08:09:10.123Z' WHERE event_id = 'd1'")
	exec(t, store.DB(), "UPDATE dead_letters SET status = 'resolved', dead_lettered_at = '2020-01-01T00:00:00.000Z' WHERE event_id = 'd3'")

	n, oldest, err = store.PendingDeadLetters(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), n, "resolved dead letters are not pending")
	require.Equal(t, time.Date(2021, 6, 7, 8, 9, 10, 123e6, time.UTC), oldest)
}
