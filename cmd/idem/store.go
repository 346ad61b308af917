package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/sqlite"
)

// store is idem's store the command works on: PostgreSQL or SQLite.
type store struct {
	dlq.Reviewer
	pg    *postgres.Store // set on PostgreSQL
	lite  *sqlite.Store   // set on SQLite
	close func()
}

// stats counts the rows of either store; sqlite.Stats mirrors postgres.Stats.
func (s *store) stats(ctx context.Context) (postgres.Stats, error) {
	if s.lite != nil {
		st, err := s.lite.Stats(ctx)
		return postgres.Stats(st), err
	}
	return s.pg.Stats(ctx)
}

// prune prunes either store; cfg is postgres.PruneConfig, which sqlite's mirrors.
func (s *store) prune(ctx context.Context, cfg postgres.PruneConfig) (postgres.PruneResult, error) {
	if s.lite != nil {
		res, err := s.lite.Prune(ctx, sqlite.PruneConfig(cfg))
		return postgres.PruneResult(res), err
	}
	return s.pg.Prune(ctx, cfg)
}

// store opens the store the database flags name, after checking that it is migrated.
// Close it with its close func.
func (e *env) store(ctx context.Context) (*store, error) {
	if e.sqlitePath != "" {
		return e.sqliteStore(ctx, false)
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	pg, err := postgres.New(pool, postgres.Config{Schema: e.schema})
	if err == nil {
		err = pg.Check(ctx)
	}
	if err != nil {
		pool.Close()
		if errors.Is(err, postgres.ErrNotMigrated) {
			// Check says what is missing and to run `idem migrate`; drop the words
			// meant for library users.
			msg := strings.TrimPrefix(err.Error(), postgres.ErrNotMigrated.Error()+": ")
			msg = strings.TrimSuffix(msg, " or postgres.Migrate")
			if !strings.Contains(msg, "idem migrate") {
				msg += "; run `idem migrate --schema " + e.schema + "`"
			}
			return nil, unreachable(fmt.Errorf("%s (database %s)", msg, e.shownURL))
		}
		return nil, err
	}
	return &store{Reviewer: pg, pg: pg, close: pool.Close}, nil
}

// sqliteStore opens the SQLite database file. Unless create is set (idem migrate), the
// file must exist and be migrated: idem never creates an empty database by mistake.
func (e *env) sqliteStore(ctx context.Context, create bool) (*store, error) {
	if !create {
		if _, err := os.Stat(e.sqlitePath); errors.Is(err, fs.ErrNotExist) {
			return nil, unreachable(fmt.Errorf("the SQLite database %s does not exist; check the path, or create it with `idem migrate --database-url %s`", e.sqlitePath, e.shownURL))
		} else if err != nil {
			return nil, unreachable(fmt.Errorf("cannot open the SQLite database %s: %w", e.sqlitePath, err))
		}
	}
	lite, err := sqlite.Open(ctx, e.sqlitePath, sqlite.Config{})
	if err != nil {
		return nil, unreachable(fmt.Errorf("cannot open the SQLite database %s: %w", e.sqlitePath, err))
	}
	closeStore := func() { _ = lite.Close() }
	if !create {
		if err := lite.Check(ctx); err != nil {
			closeStore()
			if errors.Is(err, sqlite.ErrNotMigrated) {
				msg := strings.TrimPrefix(err.Error(), sqlite.ErrNotMigrated.Error()+": ")
				msg, _, _ = strings.Cut(msg, "; run")
				return nil, unreachable(fmt.Errorf("%s; run `idem migrate --database-url %s`", msg, e.shownURL))
			}
			return nil, unreachable(fmt.Errorf("cannot open the SQLite database %s: %w", e.sqlitePath, err))
		}
	}
	return &store{Reviewer: lite, lite: lite, close: closeStore}, nil
}
