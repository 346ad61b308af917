package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dedup/deduptest"
	"github.com/idemkit/idem/dlq/dlqtest"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

func TestDedupConformance(t *testing.T) {
	t.Parallel()
	deduptest.Run(t, func(t *testing.T) deduptest.Harness {
		store, pool := testdb.Store(t)
		effects := pgx.Identifier{store.Schema(), "effects"}.Sanitize()
		_, err := pool.Exec(context.Background(), "CREATE TABLE "+effects+" (id text NOT NULL)")
		if err != nil {
			t.Fatal(err)
		}
		return deduptest.Harness{
			PayloadHashes: true,
			Store:         store,
			Peer: func(t *testing.T) dedup.Store {
				peer, err := postgres.New(pool, postgres.Config{Schema: store.Schema()})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(peer.Close)
				return peer
			},
			Effect: func(ctx context.Context, id string) error {
				tx, ok := postgres.TxFromContext(ctx)
				if !ok {
					t.Error("Run did not put its transaction in the context")
					return postgres.ErrNoTx
				}
				_, err := tx.Exec(ctx, "INSERT INTO "+effects+" (id) VALUES ($1)", id)
				return err
			},
			Effects: func(ctx context.Context, id string) (int, error) {
				var n int
				err := pool.QueryRow(ctx, "SELECT count(*) FROM "+effects+" WHERE id = $1", id).Scan(&n)
				return n, err
			},
		}
	})
}

func TestDeadLetterConformance(t *testing.T) {
	t.Parallel()
	dlqtest.Run(t, func(t *testing.T) dlqtest.Harness {
		store, _ := testdb.Store(t)
		return dlqtest.Harness{Store: store, Get: store.DeadLetter}
	})
}
