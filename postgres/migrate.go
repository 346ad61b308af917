package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/internal/migrations"
)

//go:embed migration/*.sql
var migrationFS embed.FS

// Migrations returns the embedded schema migrations, numbered NNN_name.up.sql and
// NNN_name.down.sql, for teams that run migrations with their own tool. The token
// {{schema}} in each file stands for the quoted schema name.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFS, "migration")
	if err != nil {
		panic(err) // the embedded directory always exists
	}
	return sub
}

// MigrateConfig configures [Migrate].
type MigrateConfig struct {
	// Schema is the schema to create or upgrade. Defaults to DefaultSchema.
	Schema string
}

// Migration is one applied or pending migration.
type Migration struct {
	Version int
	Name    string
}

type migration struct {
	Migration
	up string
}

func loadMigrations() ([]migration, error) {
	files, err := migrations.Load(Migrations())
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	out := make([]migration, len(files))
	for i, f := range files {
		out[i] = migration{Migration: Migration{Version: f.Version, Name: f.Name}, up: f.Up}
	}
	return out, nil
}

// LatestVersion is the schema version the embedded migrations bring a schema to.
func LatestVersion() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// TxBeginner begins transactions; *pgxpool.Pool and *pgx.Conn implement it.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Migrate applies the pending migrations to cfg.Schema in one transaction, holding a
// transaction-scoped advisory lock so that concurrent callers (replicas starting
// together) apply each migration once. It creates the schema when it does not exist,
// and returns the migrations it applied. Migrate is the only place idem runs DDL:
// consuming never changes the schema.
func Migrate(ctx context.Context, db TxBeginner, cfg MigrateConfig) ([]Migration, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	applied, err := MigrateTx(ctx, tx, cfg)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("postgres: migrate: commit: %w", err)
	}
	return applied, nil
}

// MigrateTx is [Migrate] inside the caller's transaction: the migrations commit or
// roll back with it.
func MigrateTx(ctx context.Context, tx pgx.Tx, cfg MigrateConfig) ([]Migration, error) {
	schema := cfg.Schema
	if schema == "" {
		schema = DefaultSchema
	}
	if err := ValidateIdentifier("Schema", schema); err != nil {
		return nil, err
	}
	ms, err := loadMigrations()
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "idem.migrate."+schema); err != nil {
		return nil, fmt.Errorf("postgres: migrate: lock: %w", err)
	}
	for _, stmt := range []string{
		"CREATE SCHEMA IF NOT EXISTS " + q,
		"CREATE TABLE IF NOT EXISTS " + q + ".schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
	} {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("postgres: migrate schema %s: %w", schema, err)
		}
	}
	current, err := currentVersion(ctx, tx, q)
	if err != nil {
		return nil, err
	}
	var applied []Migration
	for _, m := range ms {
		if m.Version <= current {
			continue
		}
		if _, err := tx.Exec(ctx, strings.ReplaceAll(m.up, "{{schema}}", q)); err != nil {
			return nil, fmt.Errorf("postgres: migrate schema %s to version %d (%s): %w", schema, m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("postgres: record migration %d: %w", m.Version, err)
		}
		applied = append(applied, m.Migration)
	}
	return applied, nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func currentVersion(ctx context.Context, db querier, quotedSchema string) (int, error) {
	var v int
	err := db.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+quotedSchema+".schema_migrations").Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("postgres: read schema version: %w", err)
	}
	return v, nil
}

// ErrNotMigrated reports a schema that is missing or older than this version of idem
// expects. Run `idem migrate` or [Migrate].
var ErrNotMigrated = errors.New("postgres: schema is not migrated")
