package postgres_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
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

// TestLivenessConnectsLikeThePool: the liveness connection is opened with the pool's
// hooks, so that a password or token fetched per connection, or a session setting,
// applies to it too.
func TestLivenessConnectsLikeThePool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var refuse atomic.Bool
	var after atomic.Int32
	pool := testdb.PoolWith(t, func(c *pgxpool.Config) {
		c.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
			if refuse.Load() {
				return errors.New("no token")
			}
			cc.RuntimeParams["application_name"] = "idem-liveness-test"
			return nil
		}
		c.AfterConnect = func(context.Context, *pgx.Conn) error {
			after.Add(1)
			return nil
		}
	})
	store, err := postgres.New(pool, postgres.Config{Schema: testdb.Schema(t, pool)})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	before := after.Load()

	release, err := store.HoldLive(ctx)
	require.NoError(t, err)
	require.Equal(t, before+1, after.Load(), "AfterConnect ran for the liveness connection")
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND a.application_name = 'idem-liveness-test' AND a.pid <> pg_backend_pid()`).Scan(&n))
	require.Equal(t, 1, n, "the lock is held on a connection BeforeConnect configured")
	release()
	store.Close()

	refuse.Store(true)
	other, err := postgres.New(pool, postgres.Config{Schema: store.Schema()})
	require.NoError(t, err)
	t.Cleanup(other.Close)
	_, err = other.HoldLive(ctx)
	require.ErrorContains(t, err, "BeforeConnect: no token")
	require.Equal(t, retry.ClassInfrastructure, retry.Classify(err), "not the message's fault: %v", err)
}
