package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/idemkit/idem/postgres"
)

var migrateCommands = []*command{{
	name:    "migrate",
	summary: "create the schema or apply its pending migrations",
	help: `
Migrate creates the schema when it does not exist and applies the migrations this
build of idem embeds and the schema lacks, in one transaction, under an advisory
lock: replicas migrating at the same time apply each migration once. It prints
each migration it applied, or that the schema is up to date. Migrating is the only
way idem changes the schema; consumers never do.`,
	setup: func(*flag.FlagSet) action { return runMigrate },
}}

func runMigrate(ctx context.Context, e *env) error {
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
