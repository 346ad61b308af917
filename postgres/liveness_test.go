package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// TestLivenessSurvivesALostConnection: when the session holding a store's liveness
// ends while deliveries run (the server restarted, an administrator terminated it),
// the store opens it again under the same instance number, so that the deliveries it
// runs are not taken for crashes for longer than the reconnection takes.
func TestLivenessSurvivesALostConnection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, pool := testdb.Store(t)
	other, err := postgres.New(pool, postgres.Config{Schema: store.Schema()})
	require.NoError(t, err)
	t.Cleanup(other.Close)
	key := dedup.Key{Consumer: "c", EventID: "e1"}

	release, err := store.HoldLive(ctx)
	require.NoError(t, err)
	defer release()
	n, err := store.StartAttempt(ctx, key)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = other.StartAttempt(ctx, key)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the first store runs: its start is no crash")

	var instance int32
	require.NoError(t, pool.QueryRow(ctx, "SELECT instance FROM "+store.Schema()+".started WHERE event_id = 'e1' ORDER BY last_started_at LIMIT 1").Scan(&instance))
	lockHolder := `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1::oid AND objsubid = 2`
	var pid int
	require.NoError(t, pool.QueryRow(ctx, lockHolder, instance).Scan(&pid))
	var terminated bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT pg_terminate_backend($1, 5000)", pid).Scan(&terminated))
	require.True(t, terminated)

	require.Eventually(t, func() bool {
		var again int
		err := pool.QueryRow(ctx, lockHolder, instance).Scan(&again)
		return err == nil && again != pid
	}, 15*time.Second, 20*time.Millisecond, "the store takes its lock again, under the same number")
	n, err = other.StartAttempt(ctx, key)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the first store still runs")

	release()
	store.Close()
	_, err = store.HoldLive(ctx)
	require.ErrorContains(t, err, "closed")
	n, err = other.StartAttempt(ctx, key)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the starts of a store that closed are crashes")
}
