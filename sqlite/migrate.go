package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/idemkit/idem/internal/migrations"
)

//go:embed migration/*.sql
var migrationFS embed.FS

// Migrations returns the embedded schema migrations, numbered NNN_name.up.sql and
// NNN_name.down.sql, for teams that run migrations with their own tool. Each file is
// plain SQLite SQL for the main database of the connection.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFS, "migration")
	if err != nil {
		panic(err) // the embedded directory always exists
	}
	return sub
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
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	out := make([]migration, len(files))
	for i, f := range files {
		out[i] = migration{Migration: Migration{Version: f.Version, Name: f.Name}, up: f.Up}
	}
	return out, nil
}

// LatestVersion is the schema version the embedded migrations bring a database to.
func LatestVersion() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// ErrNotMigrated reports a database that has no idem tables, or older ones than this
// version of idem expects. Run [Migrate], `idem migrate`, or open the store with
// Config.Migrate set.
var ErrNotMigrated = errors.New("sqlite: database is not migrated")

const createSchemaMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT`

// Migrate applies the pending migrations to the database in one transaction, and
// returns the migrations it applied (none when the database is up to date). The
// transaction begins with BEGIN IMMEDIATE, taking SQLite's write lock up front, so
// that processes migrating the same file at the same time apply each migration once.
// Migrate is the only place idem runs DDL: consuming never changes the schema.
//
// db is usually [Store.DB]; any *sql.DB on the modernc.org/sqlite driver works.
func Migrate(ctx context.Context, db *sql.DB) ([]Migration, error) {
	if db == nil {
		return nil, errors.New("sqlite: Migrate needs a database, got nil")
	}
	ms, err := loadMigrations()
	if err != nil {
		return nil, err
	}
	var applied []Migration
	err = immediate(ctx, db, func(c *sql.Conn) error {
		applied = nil
		if _, err := c.ExecContext(ctx, createSchemaMigrations); err != nil {
			return fmt.Errorf("sqlite: migrate: create schema_migrations: %w", err)
		}
		current, err := currentVersion(ctx, c)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Version <= current {
				continue
			}
			if _, err := c.ExecContext(ctx, m.up); err != nil {
				return fmt.Errorf("sqlite: migrate to version %d (%s): %w", m.Version, m.Name, err)
			}
			if _, err := c.ExecContext(ctx, "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)", m.Version, m.Name); err != nil {
				return fmt.Errorf("sqlite: record migration %d: %w", m.Version, err)
			}
			applied = append(applied, m.Migration)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return applied, nil
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func currentVersion(ctx context.Context, db queryRower) (int, error) {
	var v int
	if err := db.QueryRowContext(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("sqlite: read schema version: %w", err)
	}
	return v, nil
}

// immediate runs fn inside BEGIN IMMEDIATE … COMMIT on one connection of db, whatever
// the transaction mode the connection was opened with.
func immediate(ctx context.Context, db *sql.DB, fn func(c *sql.Conn) error) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sqlite: migrate: connect: %w", err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("sqlite: migrate: begin: %w", err)
	}
	if err := fn(c); err != nil {
		rollbackConn(ctx, c)
		return err
	}
	if _, err := c.ExecContext(ctx, "COMMIT"); err != nil {
		rollbackConn(ctx, c)
		return fmt.Errorf("sqlite: migrate: commit: %w", err)
	}
	return nil
}

// rollbackConn ends the transaction open on c. When that fails, the connection is
// discarded rather than handed back to the pool in an unknown state.
func rollbackConn(ctx context.Context, c *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := c.ExecContext(ctx, "ROLLBACK"); err != nil {
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
	}
}
