package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/sqlite"
)

// testStore opens a migrated store in a fresh file of its own, closed when t ends.
func testStore(t testing.TB, cfg sqlite.Config) *sqlite.Store {
	t.Helper()
	cfg.Migrate = true
	store, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "idem.db"), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	return store
}

func TestDedupConformance(t *testing.T) {
	t.Parallel()
	deduptest.Run(t, func(t *testing.T) deduptest.Harness {
		store := testStore(t, sqlite.Config{})
		db := store.DB()
		_, err := db.Exec("CREATE TABLE effects (id TEXT NOT NULL)")
		require.NoError(t, err)
		return deduptest.Harness{
			PayloadHashes: true,
			Store:         store,
			Peer: func(t *testing.T) dedup.Store {
				peer, err := sqlite.Open(context.Background(), store.Path(), sqlite.Config{})
				require.NoError(t, err)
				t.Cleanup(func() { _ = peer.Close() })
				return peer
			},
			Effect: func(ctx context.Context, id string) error {
				tx, ok := sqlite.TxFromContext(ctx)
				if !ok {
					t.Error("Run did not put its transaction in the context")
					return sqlite.ErrNoTx
				}
				_, err := tx.ExecContext(ctx, "INSERT INTO effects (id) VALUES (?1)", id)
				return err
			},
			Effects: func(ctx context.Context, id string) (int, error) {
				var n int
				err := db.QueryRowContext(ctx, "SELECT count(*) FROM effects WHERE id = ?1", id).Scan(&n)
				return n, err
			},
		}
	})
}

func TestDeadLetterConformance(t *testing.T) {
	t.Parallel()
	dlqtest.Run(t, func(t *testing.T) dlqtest.Harness {
		store := testStore(t, sqlite.Config{})
		return dlqtest.Harness{Store: store, Get: store.DeadLetter}
	})
}
