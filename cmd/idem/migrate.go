package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/sqlite"
)

var migrateCommands = []*command{{
	name:    "migrate",
	summary: "create the schema or apply its pending migrations",
	help: `
Migrate creates the schema when it does not exist and applies the migrations this
build of idem embeds and the schema lacks, in one transaction, under an advisory
lock: replicas migrating at the same time apply each migration once. It prints
each migration it applied, or that the schema is up to date. Migrating is the only
way idem changes the schema; consumers never do. On SQLite it creates the database
file when it does not exist (its directory must exist).`,
	setup: func(*flag.FlagSet) action { return runMigrate },
}}

func runMigrate(ctx context.Context, e *env) error {
	if e.sqlitePath != "" {
		return runMigrateSQLite(ctx, e)
	}
	pool, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: e.schema})
	if err != nil {
		return err
	}
	for _, m := range applied {
		fmt.Fprintf(e.stdout, "applied %03d %s\n", m.Version, m.Name)
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "schema %s is up to date (version %d)\n", e.schema, postgres.LatestVersion())
	}
	return nil
}

// runMigrateSQLite migrates a SQLite database, creating the file when it does not
// exist (its directory must).
func runMigrateSQLite(ctx context.Context, e *env) error {
	store, err := e.sqliteStore(ctx, true)
	if err != nil {
		return err
	}
	defer store.close()
	applied, err := sqlite.Migrate(ctx, store.lite.DB())
	if err != nil {
		return err
	}
	for _, m := range applied {
		fmt.Fprintf(e.stdout, "applied %03d %s\n", m.Version, m.Name)
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "%s is up to date (version %d)\n", e.sqlitePath, sqlite.LatestVersion())
	}
	return nil
}
