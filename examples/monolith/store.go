package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/sqlite"
)

// The store constructor: the other one that differs between deployments.

// storage is what the store constructor returns: idem's store, and the same database
// for the modules' tables.
type storage struct {
	describe string
	store    consumer.Store
	// txFromContext returns the transaction idem runs the current attempt in.
	txFromContext func(ctx context.Context) (Tx, bool)
	// inTx runs fn in a transaction of its own, committed when fn returns nil.
	inTx func(ctx context.Context, fn func(tx Tx) error) error
	// query runs q and calls each for every row, with the row's Scan.
	query func(ctx context.Context, q string, each func(scan func(dest ...any) error) error, args ...any) error
	close func()
}

type sqliteTx struct{ tx *sql.Tx }

func (t sqliteTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, query, args...)
	return err
}

type pgxTx struct{ tx pgx.Tx }

func (t pgxTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.Exec(ctx, query, args...)
	return err
}

// openSQLite is idem's embedded store in a local file, recreated on every run.
func openSQLite(ctx context.Context, path string) (*storage, error) {
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start from a clean database: %w", err)
		}
	}
	store, err := sqlite.Open(ctx, path, sqlite.Config{Migrate: true})
	if err != nil {
		return nil, err
	}
	db := store.DB()
	return &storage{
		describe: fmt.Sprintf("SQLite file %s, idem's tables beside the modules' (recreated on every run)", path),
		store:    store,
		txFromContext: func(ctx context.Context) (Tx, bool) {
			tx, ok := sqlite.TxFromContext(ctx)
			return sqliteTx{tx}, ok
		},
		inTx: func(ctx context.Context, fn func(Tx) error) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if err := fn(sqliteTx{tx}); err != nil {
				return errors.Join(err, tx.Rollback())
			}
			return tx.Commit()
		},
		query: func(ctx context.Context, q string, each func(func(...any) error) error, args ...any) error {
			rows, err := db.QueryContext(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := each(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
		close: func() { store.Close() },
	}, nil
}

// openPostgres is idem's PostgreSQL store in schema, on pool, whose search_path is
// schema too: the modules' tables and watermill-sql's live there as well.
func openPostgres(ctx context.Context, pool *pgxpool.Pool, schema string) (*storage, error) {
	// A deployment runs `idem migrate --schema …` before it starts; the example
	// migrates by itself.
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}); err != nil {
		return nil, err
	}
	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "TRUNCATE "+q+".processed, "+q+".attempts, "+q+".dead_letters, "+q+".started CASCADE"); err != nil {
		return nil, fmt.Errorf("empty idem's tables in schema %s: %w", schema, err)
	}
	return &storage{
		describe: fmt.Sprintf("PostgreSQL, schema %s: idem's tables beside the modules' (emptied on every run)", schema),
		store:    store,
		txFromContext: func(ctx context.Context) (Tx, bool) {
			tx, ok := postgres.TxFromContext(ctx)
			return pgxTx{tx}, ok
		},
		inTx: func(ctx context.Context, fn func(Tx) error) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fn(pgxTx{tx}) })
		},
		query: func(ctx context.Context, q string, each func(func(...any) error) error, args ...any) error {
			rows, err := pool.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := each(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
		close: func() {},
	}, nil
}

// connectPostgres opens a pool whose search_path is schema.
func connectPostgres(ctx context.Context, opts options) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(opts.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("the PostgreSQL URL does not parse: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = opts.schema
	// Each watermill-sql subscriber holds a connection for the transaction of the batch
	// it is consuming, while idem's bookkeeping and the router's publishing need others.
	cfg.MaxConns = max(cfg.MaxConns, int32(len(consumers))+8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s@%s:%d/%s: %w", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}
