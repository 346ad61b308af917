// Package testdb gives tests a real PostgreSQL: a pool on TEST_DATABASE_URL and a fresh,
// migrated schema per test, dropped when the test ends.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/postgres"
)

// DefaultURL is used when TEST_DATABASE_URL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// URL returns the test database URL.
func URL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

var (
	reachOnce sync.Once
	reachErr  error
)

// Require fails the test when PostgreSQL cannot be reached and CI is set, and skips it
// otherwise.
func Require(t testing.TB) {
	t.Helper()
	reachOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, URL())
		if err != nil {
			reachErr = err
			return
		}
		reachErr = conn.Ping(ctx)
		conn.Close(ctx)
	})
	if reachErr == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("PostgreSQL at %s is not reachable and CI is set: %v", URL(), reachErr)
	}
	t.Skipf("PostgreSQL at %s is not reachable (set TEST_DATABASE_URL, or run scripts/test): %v", URL(), reachErr)
}

// Pool returns a pool on the test database, closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return PoolWith(t, func(*pgxpool.Config) {})
}

// PoolWith is [Pool] with a chance to change the pool's configuration.
func PoolWith(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	Require(t)
	cfg, err := pgxpool.ParseConfig(URL())
	if err != nil {
		t.Fatalf("parse TEST_DATABASE_URL: %v", err)
	}
	configure(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect to %s: %v", URL(), err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Schema creates a fresh schema named test_<random>, migrates it, and drops it when the
// test ends. It returns the schema's name.
func Schema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "test_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	if _, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}); err != nil {
		t.Fatalf("migrate schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// Store returns a postgres.Store on a fresh schema, with its pool.
func Store(t testing.TB) (*postgres.Store, *pgxpool.Pool) {
	t.Helper()
	pool := Pool(t)
	store, err := postgres.New(pool, postgres.Config{Schema: Schema(t, pool)})
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(store.Close)
	return store, pool
}
