package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

type result struct {
	code           int
	stdout, stderr string
}

// idem runs the command line args as main does.
func idem(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// idemWith runs args with the environment env instead of the process's, and a
// connect timeout of its own.
func idemWith(t *testing.T, env map[string]string, timeout time.Duration, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := &cli{stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }, connectTimeout: timeout}
	code := c.run(t.Context(), args)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func randomSchema(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func dropSchema(t *testing.T, pool *pgxpool.Pool, schema string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		require.NoError(t, err)
	})
}

func TestMigrate(t *testing.T) {
	t.Parallel()

	t.Run("AppliesThenIsUpToDate", func(t *testing.T) {
		t.Parallel()
		pool := testdb.Pool(t)
		schema := randomSchema("cli_")
		dropSchema(t, pool, schema)

		res := idem(t, "migrate", "--database-url", testdb.URL(), "--schema", schema)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, appliedAll(), res.stdout)
		require.Empty(t, res.stderr)

		store, err := postgres.New(pool, postgres.Config{Schema: schema})
		require.NoError(t, err)
		require.NoError(t, store.Check(t.Context()))

		res = idem(t, "migrate", "--schema", schema, "--database-url", testdb.URL())
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "schema "+schema+" is up to date (version "+strconv.Itoa(postgres.LatestVersion())+")\n", res.stdout)
	})

	t.Run("URLFromEnvironment", func(t *testing.T) {
		t.Parallel()
		pool := testdb.Pool(t)
		schema := randomSchema("cli_")
		dropSchema(t, pool, schema)

		res := idemWith(t, map[string]string{"IDEM_DATABASE_URL": testdb.URL()}, 5*time.Second, "migrate", "--schema", schema)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, appliedAll(), res.stdout)
	})

	t.Run("FlagOverridesEnvironment", func(t *testing.T) {
		t.Parallel()
		testdb.Require(t)
		env := map[string]string{"IDEM_DATABASE_URL": "postgres://postgres@127.0.0.1:1/test"}
		res := idemWith(t, env, 5*time.Second, "migrate", "--database-url", testdb.URL(), "--schema", testdb.Schema(t, testdb.Pool(t)))
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "is up to date (version "+strconv.Itoa(postgres.LatestVersion())+")")
	})

	t.Run("BadSchemaName", func(t *testing.T) {
		t.Parallel()
		res := idem(t, "migrate", "--database-url", "postgres://postgres@127.0.0.1:1/test", "--schema", "Bad-Name")
		require.Equal(t, 2, res.code)
		require.Contains(t, res.stderr, `idem: --schema "Bad-Name" is not a plain identifier`)
	})
}

type dedupBundle struct {
	pool   *pgxpool.Pool
	schema string
}

func setupDedup(t *testing.T) *dedupBundle {
	t.Helper()
	pool := testdb.Pool(t)
	return &dedupBundle{pool: pool, schema: testdb.Schema(t, pool)}
}

// seed inserts 3 processed rows 200 hours old and 2 fresh ones, 2 attempt counts 200
// hours old (one of an event with a pending dead letter) and a fresh one.
func (b *dedupBundle) seed(t *testing.T) {
	t.Helper()
	q := pgx.Identifier{b.schema}.Sanitize()
	_, err := b.pool.Exec(t.Context(), `
INSERT INTO `+q+`.processed (consumer, event_id, processed_at) VALUES
    ('orders', 'old-1', now() - interval '200 hours'),
    ('orders', 'old-2', now() - interval '200 hours'),
    ('orders', 'old-3', now() - interval '170 hours'),
    ('orders', 'new-1', now() - interval '1 hour'),
    ('orders', 'new-2', now());
INSERT INTO `+q+`.attempts (consumer, event_id, attempts, first_failure_at, last_failure_at, last_error) VALUES
    ('orders', 'old-1', 2, now() - interval '201 hours', now() - interval '200 hours', 'boom'),
    ('orders', 'dead-1', 3, now() - interval '201 hours', now() - interval '200 hours', 'boom'),
    ('orders', 'new-3', 1, now(), now(), 'boom');
INSERT INTO `+q+`.dead_letters (consumer, event_id, topic, handler, message_uuid, payload, metadata, reason,
    error, fingerprint, attempts, correlation_id, trace_id, span_id, first_failed_at, last_failed_at, dead_lettered_at) VALUES
    ('orders', 'dead-1', 'orders', 'h', 'u', '\x00', '{}', 'attempts', 'boom', 'f', 3, '', '', '',
     now() - interval '201 hours', now() - interval '200 hours', now() - interval '2 hours')`)
	require.NoError(t, err)
}

func (b *dedupBundle) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	err := b.pool.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{b.schema, table}.Sanitize()).Scan(&n)
	require.NoError(t, err)
	return n
}

func TestDedupPrune(t *testing.T) {
	t.Parallel()

	t.Run("DeletesOldRowsInBatches", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)
		bundle.seed(t)

		res := idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", bundle.schema, "--retention", "168h", "--replay-window", "72h", "--batch", "2")
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "deleted 3 processed rows and 1 attempt counts older than 168h0m0s\ndeleted 0 reviewed dead letters unchanged for 720h0m0s and 0 audit rows older than 8760h0m0s\n", res.stdout)
		require.Empty(t, res.stderr)
		require.Equal(t, 2, bundle.count(t, "processed"))
		require.Equal(t, 2, bundle.count(t, "attempts")) // dead-1 has a pending dead letter

		res = idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", bundle.schema)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "deleted 0 processed rows and 0 attempt counts older than 168h0m0s\ndeleted 0 reviewed dead letters unchanged for 720h0m0s and 0 audit rows older than 8760h0m0s\n", res.stdout)
	})

	t.Run("KeepsRowsYoungerThanRetention", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)
		bundle.seed(t)

		res := idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", bundle.schema, "--retention", "180h")
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "deleted 2 processed rows and 1 attempt counts older than 180h0m0s\ndeleted 0 reviewed dead letters unchanged for 720h0m0s and 0 audit rows older than 8760h0m0s\n", res.stdout)
		require.Equal(t, 3, bundle.count(t, "processed"))
	})

	t.Run("ReviewedDeadLettersAndTheAudit", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)
		bundle.seed(t)
		q := pgx.Identifier{bundle.schema}.Sanitize()
		_, err := bundle.pool.Exec(t.Context(), `
INSERT INTO `+q+`.dead_letters (consumer, event_id, topic, handler, message_uuid, payload, metadata, reason,
    error, fingerprint, attempts, correlation_id, trace_id, span_id, first_failed_at, last_failed_at, status, updated_at) VALUES
    ('orders', 'resolved-old', 'orders', 'h', 'u', '', '{}', 'exhausted', 'boom', 'f', 3, '', '', '', now(), now(), 'resolved', now() - interval '10 days'),
    ('orders', 'discarded-old', 'orders', 'h', 'u', '', '{}', 'exhausted', 'boom', 'f', 3, '', '', '', now(), now(), 'discarded', now() - interval '10 days'),
    ('orders', 'pending-old', 'orders', 'h', 'u', '', '{}', 'exhausted', 'boom', 'f', 3, '', '', '', now(), now(), 'pending', now() - interval '10 days');
INSERT INTO `+q+`.dead_letter_audit (at, action, os_user, host, selector, reason, dead_letter_ids) VALUES
    (now() - interval '40 days', 'resolve', 'op', 'h', 'ids', '', '{1}'),
    (now() - interval '1 day', 'discard', 'op', 'h', 'ids', 'test', '{2}')`)
		require.NoError(t, err)

		res := idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", bundle.schema,
			"--dead-letter-retention", "7d", "--audit-retention", "30d")
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "deleted 3 processed rows and 1 attempt counts older than 168h0m0s\n"+
			"deleted 2 reviewed dead letters unchanged for 168h0m0s and 1 audit rows older than 720h0m0s\n", res.stdout)
		require.Equal(t, 2, bundle.count(t, "dead_letters"), "pending ones stay")
		require.Equal(t, 1, bundle.count(t, "dead_letter_audit"))

		res = idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", bundle.schema,
			"--dead-letter-retention", "-1", "--audit-retention", "never")
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "deleted 0 processed rows and 0 attempt counts older than 168h0m0s\n"+
			"kept reviewed dead letters forever and kept the audit forever\n", res.stdout)
	})

	t.Run("BadValues", func(t *testing.T) {
		t.Parallel()
		url := "postgres://postgres@127.0.0.1:1/test" // never reached: values are checked first
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"--retention", "24h", "--replay-window", "48h"}, "--retention 24h0m0s is shorter than --replay-window 48h0m0s"},
			{[]string{"--retention", "0s"}, "--retention must be positive"},
			{[]string{"--retention", "-1h"}, "--retention must be positive"},
			{[]string{"--retention", "a week"}, `invalid value "a week" for flag -retention`},
			{[]string{"--replay-window", "-1h"}, "--replay-window must not be negative"},
			{[]string{"--batch", "0"}, "--batch must be at least 1"},
			{[]string{"--batch", "many"}, `invalid value "many" for flag -batch`},
			{[]string{"--dead-letter-retention", "10ms"}, `"10ms" must be at least 1s, or -1 to keep the rows forever`},
			{[]string{"--dead-letter-retention", "-2h"}, `"-2h" must be at least 1s`},
			{[]string{"--audit-retention", "soon"}, `"soon" is not a duration such as 36h or 7d`},
			{[]string{"--dead-letter-retention", "60d", "--audit-retention", "30d"}, "--audit-retention 720h0m0s is shorter than --dead-letter-retention 1440h0m0s"},
			{[]string{"--dead-letter-retention", "-1"}, "--audit-retention 8760h0m0s is shorter than --dead-letter-retention -1 (forever)"},
			{[]string{"extra"}, `dedup prune takes no arguments, got "extra"`},
		} {
			res := idem(t, append([]string{"dedup", "prune", "--database-url", url}, tt.args...)...)
			require.Equal(t, 2, res.code, "%v: %s", tt.args, res.stderr)
			require.Contains(t, res.stderr, tt.want, tt.args)
			require.Contains(t, res.stderr, "idem: run 'idem dedup prune -h' for usage")
			require.Empty(t, res.stdout)
		}
	})

	t.Run("MissingSchema", func(t *testing.T) {
		t.Parallel()
		testdb.Require(t)
		res := idem(t, "dedup", "prune", "--database-url", testdb.URL(), "--schema", randomSchema("cli_missing_"))
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "run `idem migrate --schema cli_missing_")
	})
}

func TestDedupStats(t *testing.T) {
	t.Parallel()

	t.Run("Text", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)
		bundle.seed(t)

		res := idem(t, "dedup", "stats", "--database-url", testdb.URL(), "--schema", bundle.schema)
		require.Equal(t, 0, res.code, res.stderr)
		lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
		require.Len(t, lines, 6, res.stdout)
		require.Regexp(t, `^schema +`+bundle.schema+`$`, lines[0])
		require.Regexp(t, `^processed rows +5$`, lines[1])
		require.Regexp(t, `^oldest processed row +20\dh\d+m\d+s ago \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$`, lines[2])
		require.Regexp(t, `^attempt counts +3$`, lines[3])
		require.Regexp(t, `^pending dead letters +1$`, lines[4])
		require.Regexp(t, `^oldest pending dead letter +[12]h\d+m\d+s ago \(`, lines[5])
	})

	t.Run("TextEmpty", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)

		res := idem(t, "dedup", "stats", "--database-url", testdb.URL(), "--schema", bundle.schema)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "oldest processed row         -\n")
		require.Contains(t, res.stdout, "pending dead letters         0\n")
	})

	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)
		bundle.seed(t)

		res := idem(t, "dedup", "stats", "--format", "json", "--database-url", testdb.URL(), "--schema", bundle.schema)
		require.Equal(t, 0, res.code, res.stderr)
		var got map[string]any
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.ElementsMatch(t, []string{
			"schema", "processed", "oldest_processed_at", "oldest_processed_age_seconds", "attempts",
			"pending_dead_letters", "oldest_pending_dead_letter_at", "oldest_pending_dead_letter_age_seconds",
		}, keys(got))
		require.Equal(t, bundle.schema, got["schema"])
		require.InDelta(t, 5, got["processed"], 0)
		require.InDelta(t, 3, got["attempts"], 0)
		require.InDelta(t, 1, got["pending_dead_letters"], 0)
		require.InDelta(t, 200*3600, got["oldest_processed_age_seconds"], 60)
		require.InDelta(t, 2*3600, got["oldest_pending_dead_letter_age_seconds"], 60)
		at, err := time.Parse(time.RFC3339Nano, got["oldest_processed_at"].(string))
		require.NoError(t, err)
		require.WithinDuration(t, time.Now().Add(-200*time.Hour), at, time.Minute)
	})

	t.Run("JSONEmpty", func(t *testing.T) {
		t.Parallel()
		bundle := setupDedup(t)

		res := idem(t, "dedup", "stats", "--database-url", testdb.URL(), "--schema", bundle.schema, "--format=json")
		require.Equal(t, 0, res.code, res.stderr)
		require.JSONEq(t, `{"schema": "`+bundle.schema+`", "processed": 0, "oldest_processed_at": null,
			"oldest_processed_age_seconds": null, "attempts": 0, "pending_dead_letters": 0,
			"oldest_pending_dead_letter_at": null, "oldest_pending_dead_letter_age_seconds": null}`, res.stdout)
	})

	t.Run("BadFormat", func(t *testing.T) {
		t.Parallel()
		res := idem(t, "dedup", "stats", "--database-url", "postgres://postgres@127.0.0.1:1/test", "--format", "yaml")
		require.Equal(t, 2, res.code)
		require.Contains(t, res.stderr, `idem: --format must be text or json, got "yaml"`)
	})

	t.Run("MissingSchema", func(t *testing.T) {
		t.Parallel()
		testdb.Require(t)
		schema := randomSchema("cli_missing_")
		res := idem(t, "dedup", "stats", "--database-url", testdb.URL(), "--schema", schema)
		require.Equal(t, 3, res.code, res.stderr)
		require.Equal(t, "idem: schema "+schema+" has no idem tables; run `idem migrate --schema "+schema+"` (database "+redactURL(testdb.URL())+")\n", res.stderr)
		require.Empty(t, res.stdout)
	})

	t.Run("OldSchema", func(t *testing.T) {
		t.Parallel()
		pool := testdb.Pool(t)
		schema := randomSchema("cli_")
		dropSchema(t, pool, schema)
		_, err := pool.Exec(t.Context(), "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".schema_migrations (version integer PRIMARY KEY, name text NOT NULL)")
		require.NoError(t, err)

		res := idem(t, "dedup", "stats", "--database-url", testdb.URL(), "--schema", schema)
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "idem: schema "+schema+" is at version 0, this idem needs "+strconv.Itoa(postgres.LatestVersion())+"; run `idem migrate --schema "+schema+"` (database ")
	})
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"UnknownCommand", []string{"frobnicate"}, `idem: unknown command "frobnicate"` + "\nidem: run 'idem help' for usage\n"},
		{"UnknownSubcommand", []string{"dedup", "vacuum"}, `idem: unknown command "dedup vacuum"` + "\nidem: run 'idem dedup -h' for usage\n"},
		{"UnknownHelpTopic", []string{"help", "frobnicate"}, `idem: unknown command "frobnicate"`},
		{"UnknownFlag", []string{"migrate", "--database-url", "postgres://postgres@127.0.0.1:1/test", "--colour"}, "idem: migrate: flag provided but not defined: -colour\nidem: run 'idem migrate -h' for usage\n"},
		{"FlagBeforeCommand", []string{"--schema", "x", "migrate"}, "idem: flag --schema must come after a command"},
		{"MissingFlagValue", []string{"dedup", "stats", "--schema"}, "idem: dedup stats: flag needs an argument: -schema"},
		{"Arguments", []string{"migrate", "now"}, `idem: migrate takes no arguments, got "now"`},
		{"VersionFlags", []string{"version", "--schema", "x"}, "flag provided but not defined: -schema"},
		{"BadScheme", []string{"migrate", "--database-url", "mysql://root@127.0.0.1/test"}, `idem: unsupported database URL scheme "mysql" in mysql://REDACTED@127.0.0.1/test: use a postgres:// URL such as postgres://db.internal:5432/app, or a SQLite file as sqlite:path/to/file.db or path/to/file.db`},
		{"SQLiteHost", []string{"dedup", "stats", "--database-url", "sqlite://host/var/lib/idem.db"}, "idem: the SQLite URL sqlite://host/var/lib/idem.db names a host: use sqlite:///absolute/path.db or sqlite:relative/path.db"},
		{"SQLiteQuery", []string{"dlq", "report", "--database-url", "sqlite:idem.db?mode=ro"}, "has a query or fragment"},
		{"SQLiteNoFile", []string{"dlq", "report", "--database-url", "sqlite:"}, "idem: the SQLite URL sqlite: names no file"},
		{"SQLiteSchema", []string{"dlq", "report", "--database-url", "idem.db", "--schema", "messaging"}, "idem: --schema applies to PostgreSQL only: a SQLite database has no schemas"},
		{"NotAURL", []string{"migrate", "--database-url", "host=localhost user=postgres"}, "idem: the database URL is neither a postgres:// URL nor a SQLite file: use a postgres:// URL such as postgres://db.internal:5432/app, or a SQLite file as sqlite:path/to/file.db or path/to/file.db"},
		{"InvalidURL", []string{"migrate", "--database-url", "postgres://postgres@127.0.0.1:port/test"}, "idem: the database URL is not a valid URL: invalid port"},
		{"BadURLParameter", []string{"migrate", "--database-url", "postgres://postgres@127.0.0.1:1/test?sslmode=sometimes"}, "idem: bad database URL postgres://REDACTED@127.0.0.1:1/test?sslmode=sometimes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := idem(t, tt.args...)
			require.Equal(t, 2, res.code, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, res.stdout)
		})
	}

	t.Run("MissingURL", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"migrate"}, {"dedup", "prune"}, {"dedup", "stats", "--database-url", ""}} {
			res := idemWith(t, nil, time.Second, args...)
			require.Equal(t, 2, res.code, res.stderr)
			require.Contains(t, res.stderr, "idem: no database URL: set --database-url or the IDEM_DATABASE_URL environment variable\n")
			require.Contains(t, res.stderr, "idem: run 'idem "+strings.Join(args[:min(2, len(args))], " ")+" -h' for usage\n")
		}
	})

	t.Run("NoCommand", func(t *testing.T) {
		t.Parallel()
		res := idem(t)
		require.Equal(t, 2, res.code)
		require.Contains(t, res.stderr, "Usage:\n  idem <command> [flags]")
		require.Empty(t, res.stdout)

		res = idem(t, "dedup")
		require.Equal(t, 2, res.code)
		require.Contains(t, res.stderr, "idem dedup <command> [flags]")
	})
}

func TestUnreachable(t *testing.T) {
	t.Parallel()

	t.Run("ConnectionRefused", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"migrate"}, {"dedup", "prune"}, {"dedup", "stats"}} {
			res := idem(t, append(args, "--database-url", "postgres://postgres@127.0.0.1:1/test")...)
			require.Equal(t, 3, res.code, res.stderr)
			require.Contains(t, res.stderr, "idem: cannot connect to postgres://REDACTED@127.0.0.1:1/test: ")
			require.Empty(t, res.stdout)
		}
	})

	t.Run("NoSuchDatabase", func(t *testing.T) {
		t.Parallel()
		testdb.Require(t)
		u, err := url.Parse(testdb.URL())
		require.NoError(t, err)
		u.Path = "/" + randomSchema("no_such_db_")
		res := idem(t, "migrate", "--database-url", u.String())
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "does not exist")
	})

	t.Run("TimesOut", func(t *testing.T) {
		t.Parallel()
		// A server that accepts connections and never answers.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { ln.Close() })
		go func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()

		start := time.Now()
		res := idemWith(t, nil, 300*time.Millisecond, "dedup", "stats", "--database-url", "postgres://postgres@"+ln.Addr().String()+"/test?sslmode=disable")
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "idem: cannot connect to ")
		require.Less(t, time.Since(start), 3*time.Second)
	})

	t.Run("PasswordIsNeverPrinted", func(t *testing.T) {
		t.Parallel()
		const password = "s3cr3t-Pa55"
		for _, dbURL := range []string{
			"postgres://postgres:" + password + "@127.0.0.1:1/test?sslmode=disable",
			"postgresql://postgres:" + password + "@127.0.0.1:1/test",
			"postgres://postgres@127.0.0.1:1/test?password=" + password,
			"postgres://postgres:" + url.QueryEscape(password+"/#?") + "@127.0.0.1:1/test",
		} {
			res := idem(t, "dedup", "stats", "--database-url", dbURL)
			require.Equal(t, 3, res.code, res.stderr)
			require.NotContains(t, res.stderr, password)
			require.Contains(t, res.stderr, "://REDACTED@127.0.0.1:1/test")
		}
		for _, dbURL := range []string{
			"mysql://root:" + password + "@127.0.0.1/test",
			"postgres://postgres:" + password + "@127.0.0.1:port/test",
			"postgres://postgres:" + password + "@127.0.0.1:1/test?sslmode=sometimes",
			"host=127.0.0.1 password=" + password,
		} {
			res := idem(t, "migrate", "--database-url", dbURL)
			require.Equal(t, 2, res.code, res.stderr)
			require.NotContains(t, res.stderr, password)
		}
		res := idemWith(t, map[string]string{"IDEM_DATABASE_URL": "postgres://postgres:" + password + "@127.0.0.1:1/test"}, time.Second, "migrate")
		require.Equal(t, 3, res.code, res.stderr)
		require.NotContains(t, res.stderr, password)
	})
}

func TestHelp(t *testing.T) {
	t.Parallel()

	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		res := idem(t, args...)
		require.Equal(t, 0, res.code, args)
		require.Empty(t, res.stderr)
		for _, want := range []string{"migrate [flags]", "dedup prune [flags]", "dedup stats [flags]", "version", "help [command]",
			"--database-url URL", "$IDEM_DATABASE_URL", "--schema NAME", "Exit codes:", "3  cannot reach the store"} {
			require.Contains(t, res.stdout, want, args)
		}
	}

	for _, args := range [][]string{{"dedup", "prune", "-h"}, {"dedup", "prune", "--help"}, {"help", "dedup", "prune"}, {"dedup", "prune", "--batch", "5", "-h"}} {
		res := idem(t, args...)
		require.Equal(t, 0, res.code, args)
		require.Contains(t, res.stdout, "Usage:\n  idem dedup prune [flags]\n", args)
		for _, want := range []string{"--retention DURATION", "(default 168h0m0s)", "--replay-window DURATION", "--batch N", "(default 1000)", "--database-url URL", "--schema NAME", "Exit codes:"} {
			require.Contains(t, res.stdout, want, args)
		}
	}

	for _, args := range [][]string{{"dedup", "-h"}, {"help", "dedup"}} {
		res := idem(t, args...)
		require.Equal(t, 0, res.code, args)
		require.Contains(t, res.stdout, "dedup prune [flags]")
		require.Contains(t, res.stdout, "dedup stats [flags]")
	}

	res := idem(t, "migrate", "-h")
	require.Equal(t, 0, res.code)
	require.Contains(t, res.stdout, "Usage:\n  idem migrate [flags]\n")

	res = idem(t, "dedup", "stats", "-h")
	require.Equal(t, 0, res.code)
	require.Contains(t, res.stdout, "--format FORMAT")
}

func TestVersion(t *testing.T) {
	t.Parallel()
	res := idem(t, "version")
	require.Equal(t, 0, res.code)
	require.Equal(t, "idem devel\n", res.stdout) // a test binary has no module version
}

// appliedAll is what `idem migrate` prints on a new schema.
func appliedAll() string {
	var b strings.Builder
	entries, _ := fs.Glob(postgres.Migrations(), "*.up.sql")
	for _, e := range entries {
		num, name, _ := strings.Cut(strings.TrimSuffix(e, ".up.sql"), "_")
		fmt.Fprintf(&b, "applied %s %s\n", num, name)
	}
	return b.String()
}
