package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
)

// goldenCases are the outputs compared with testdata/: report, list and show in every
// format, on the same seed for both stores.
var goldenCases = []struct {
	name string
	args []string
}{
	{"report.table", []string{"dlq", "report"}},
	{"report.json", []string{"dlq", "report", "--format", "json"}},
	{"report.markdown", []string{"dlq", "report", "--format", "markdown"}},
	{"report.csv", []string{"dlq", "report", "--format", "csv"}},
	{"report-all.table", []string{"dlq", "report", "--status", "all"}},
	{"report-wide.table", []string{"dlq", "report", "--wide"}},
	{"report-wide.json", []string{"dlq", "report", "--wide", "--format", "json"}},
	{"list.table", []string{"dlq", "list"}},
	{"list.json", []string{"dlq", "list", "--format", "json"}},
	{"list.markdown", []string{"dlq", "list", "--format", "markdown"}},
	{"list.csv", []string{"dlq", "list", "--format", "csv"}},
	{"list-page.table", []string{"dlq", "list", "--status", "all", "--limit", "2", "--after", "1"}},
	{"show.table", []string{"dlq", "show", "1"}},
	{"show-payload.table", []string{"dlq", "show", "1", "--show-payload", "--redact-keys", "tenant"}},
	{"show.json", []string{"dlq", "show", "1", "--show-payload", "--format", "json"}},
	{"show.markdown", []string{"dlq", "show", "1", "--show-payload", "--format", "markdown"}},
	{"show.csv", []string{"dlq", "show", "1", "--show-payload", "--format", "csv"}},
	{"show-escapes.table", []string{"dlq", "show", "4", "--show-payload"}},
	{"show-escapes.markdown", []string{"dlq", "show", "4", "--show-payload", "--format", "markdown"}},
	{"show-binary.json", []string{"dlq", "show", "5", "--show-payload", "--format", "json"}},
}

func TestGolden(t *testing.T) {
	t.Parallel()
	for _, backend := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"PostgreSQL", func(t *testing.T) []string { return pgArgs(t, goldenRows) }},
		{"SQLite", func(t *testing.T) []string { return []string{"--database-url", "sqlite://" + sqliteDB(t, goldenRows)} }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			if backend.name == "SQLite" && *update {
				t.Skip("goldens are written from PostgreSQL; SQLite must match them")
			}
			db := backend.args(t)
			for _, tc := range goldenCases {
				res := idemAt(t, append(tc.args, db...)...)
				require.Equal(t, 0, res.code, "%s: %s", tc.name, res.stderr)
				require.Empty(t, res.stderr, tc.name)
				requireInert(t, res.stdout)
				golden(t, tc.name+".golden", res.stdout)
			}
		})
	}
}

func TestOutputIsInert(t *testing.T) {
	t.Parallel()
	db := []string{"--database-url", sqliteDB(t, goldenRows)}

	t.Run("TerminalEscapes", func(t *testing.T) {
		t.Parallel()
		for _, format := range allFormats {
			res := idemAt(t, append([]string{"dlq", "show", "4", "--show-payload", "--format", format}, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			requireInert(t, res.stdout)
			require.NotContains(t, res.stdout, "\x07")
			require.NotContains(t, res.stdout, "\u009b")
			require.NotContains(t, res.stdout, "\u202e")
			if format != formatJSON {
				require.Contains(t, res.stdout, `\x1b]0;pwned\x07\x1b[2J`, format)
				require.Contains(t, res.stdout, `\u009b31m\u202eevil`, format)
			} else {
				require.Contains(t, res.stdout, `\u001b]0;pwned\u0007\u001b[2J`)
				require.Contains(t, res.stdout, `\u009b31m\u202eevil`)
			}
		}
		for _, args := range [][]string{{"dlq", "report"}, {"dlq", "list"}, {"dlq", "list", "--format", "markdown"}, {"dlq", "report", "--format", "json"}} {
			res := idemAt(t, append(args, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			requireInert(t, res.stdout)
			require.NotContains(t, res.stdout, "\r")
			require.NotRegexp(t, `(?m)^forged log line`, res.stdout, "a newline in an error cannot start a line of output")
		}
	})

	t.Run("CSVFormulas", func(t *testing.T) {
		t.Parallel()
		res := idemAt(t, append([]string{"dlq", "list", "--format", "csv"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, `,'=cmd|' /C calc'!A0,`)
		require.Contains(t, res.stdout, `'+1 is not a valid amount`)
		require.NotRegexp(t, `(^|,)"?[=+@-]`, strings.ReplaceAll(res.stdout, "\n", ","), "no cell starts a formula")

		res = idemAt(t, append([]string{"dlq", "report", "--format", "csv"}, db...)...)
		require.Contains(t, res.stdout, "'-1e1e1e1e1e1e1e1")
		res = idemAt(t, append([]string{"dlq", "show", "5", "--format", "csv"}, db...)...)
		require.Contains(t, res.stdout, "event_type,'@SUM(A1:A9)")
	})

	t.Run("SecretsRedactedEvenWithPayload", func(t *testing.T) {
		t.Parallel()
		for _, format := range allFormats {
			res := idemAt(t, append([]string{"dlq", "show", "1", "--show-payload", "--redact-keys", "tenant", "--format", format}, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			require.NotContains(t, res.stdout, "tok_live_4242", format)
			require.NotContains(t, res.stdout, "s3cret", format)
			require.NotContains(t, res.stdout, "acme", format)
			require.Contains(t, res.stdout, "total_cents", format)
		}
		res := idemAt(t, append([]string{"dlq", "show", "1", "--format", "json"}, db...)...)
		require.NotContains(t, res.stdout, "total_cents", "the payload is hidden without --show-payload")
	})
}

func TestSQLite(t *testing.T) {
	t.Parallel()
	path := sqliteDB(t, goldenRows)
	dir, file := filepath.Split(path)

	// Every form of the URL names the same file.
	want := idemAt(t, "dlq", "report", "--database-url", path)
	require.Equal(t, 0, want.code, want.stderr)
	require.Contains(t, want.stdout, "total: 5 pending dead letters in 4 groups")
	for _, tc := range []struct{ dir, url string }{
		{"", "sqlite://" + path}, // sqlite:///abs/path.db
		{"", "sqlite:" + path},
		{dir, "sqlite:" + file},
		{dir, file},
		{"", "sqlite://" + strings.Replace(path, "idem.db", "idem%2Edb", 1)},
	} {
		res := exe(t, tc.dir, map[string]string{envNow: testNow}, "dlq", "report", "--database-url", tc.url)
		require.Equal(t, 0, res.code, "%s: %s", tc.url, res.stderr)
		require.Equal(t, want.stdout, res.stdout, tc.url)
	}
	res := exe(t, dir, map[string]string{envNow: testNow, envDatabaseURL: file}, "dlq", "check", "--max-pending", "10")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "OK: 5 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z) (at most 10)\n", res.stdout)

	// The other commands work on SQLite too.
	res = exe(t, dir, nil, "dedup", "stats", "--database-url", file, "--format", "json")
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, `"schema": "main"`)
	require.Contains(t, res.stdout, `"pending_dead_letters": 5`)
	res = exe(t, dir, nil, "dedup", "prune", "--database-url", file)
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "deleted 0 processed rows and 0 attempt counts older than 168h0m0s\ndeleted 1 reviewed dead letters unchanged for 720h0m0s and 0 audit rows older than 8760h0m0s\n", res.stdout,
		"the fixtures' resolved dead letter is months old")
	res = exe(t, dir, nil, "migrate", "--database-url", file)
	require.Equal(t, 0, res.code, res.stderr)
	require.Contains(t, res.stdout, "idem.db is up to date (version ")
}

func TestCheck(t *testing.T) {
	t.Parallel()
	pending := goldenRows[:3] // oldest 2026-01-08T09:30:00Z, 50h30m before testNow

	for _, backend := range []struct {
		name       string
		empty, old func(t *testing.T) []string
	}{
		{"PostgreSQL", func(t *testing.T) []string { return pgArgs(t, nil) }, func(t *testing.T) []string { return pgArgs(t, pending) }},
		{"SQLite", func(t *testing.T) []string { return []string{"--database-url", sqliteDB(t, nil)} }, func(t *testing.T) []string {
			return []string{"--database-url", sqliteDB(t, pending)}
		}},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			empty, seeded := backend.empty(t), backend.old(t)
			for _, tc := range []struct {
				name string
				db   []string
				args []string
				code int
				want string
			}{
				{"Empty", empty, nil, 0, "OK: 0 pending dead letters (at most 0)\n"},
				{"EmptyWithAge", empty, []string{"--max-age", "1h"}, 0, "OK: 0 pending dead letters (at most 0, none older than 1h0m)\n"},
				{"AnyPendingFailsByDefault", seeded, nil, 1, "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): more than 0\n"},
				{"BelowThresholds", seeded, []string{"--max-pending", "3", "--max-age", "72h"}, 0, "OK: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z) (at most 3, none older than 3d0h)\n"},
				{"TooMany", seeded, []string{"--max-pending", "2", "--max-age", "72h"}, 1, "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): more than 2\n"},
				{"TooOld", seeded, []string{"--max-pending", "-1", "--max-age", "24h"}, 1, "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): the oldest older than 24h0m\n"},
				{"TooOldInDays", seeded, []string{"--max-pending", "-1", "--max-age", "2d"}, 1, "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): the oldest older than 2d0h\n"},
				{"Both", seeded, []string{"--max-pending", "1", "--max-age", "1h"}, 1, "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): more than 1, the oldest older than 1h0m\n"},
				{"Filtered", seeded, []string{"--consumer", "billing", "--fingerprint", "8c1e44b0a9d2f311", "--max-pending", "1"}, 0,
					"OK: 1 pending dead letter, oldest 45m0s (2026-01-10T11:15:00Z) for consumer=billing fingerprint=8c1e44b0a9d2f311 (at most 1)\n"},
			} {
				res := idemAt(t, append(append([]string{"dlq", "check"}, tc.args...), tc.db...)...)
				require.Equal(t, tc.code, res.code, "%s: %s", tc.name, res.stderr)
				require.Equal(t, tc.want, res.stdout, tc.name)
				require.Empty(t, res.stderr, tc.name)
			}

			res := idemAt(t, append([]string{"dlq", "check", "--max-pending", "2", "--format", "json"}, seeded...)...)
			require.Equal(t, 1, res.code)
			require.JSONEq(t, `{"ok": false, "pending": 3, "max_pending": 2, "oldest_at": "2026-01-08T09:30:00Z",
				"oldest_age_seconds": 181800, "max_age_seconds": null,
				"summary": "FAIL: 3 pending dead letters, oldest 2d2h (2026-01-08T09:30:00Z): more than 2"}`, res.stdout)
		})
	}

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		res := idemAt(t, "dlq", "check", "--database-url", "postgres://postgres@127.0.0.1:1/test")
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "idem: cannot connect to postgres://REDACTED@127.0.0.1:1/test")
		require.Empty(t, res.stdout)

		res = idemAt(t, "dlq", "check", "--database-url", filepath.Join(t.TempDir(), "missing.db"))
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "missing.db does not exist; check the path, or create it with `idem migrate --database-url ")

		notDB := filepath.Join(t.TempDir(), "garbage.db")
		require.NoError(t, os.WriteFile(notDB, []byte("this is not a database, it is a text file of some length......."), 0o600))
		res = idemAt(t, "dlq", "check", "--database-url", notDB)
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "cannot open the SQLite database")
	})

	t.Run("NotMigrated", func(t *testing.T) {
		t.Parallel()
		testdb.Require(t)
		schema := randomSchema("cli_missing_")
		res := idemAt(t, "dlq", "check", "--database-url", testdb.URL(), "--schema", schema)
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "run `idem migrate --schema "+schema+"`")

		path := filepath.Join(t.TempDir(), "empty.db")
		require.NoError(t, os.WriteFile(path, nil, 0o600))
		res = idemAt(t, "dlq", "report", "--database-url", path)
		require.Equal(t, 3, res.code, res.stderr)
		require.Contains(t, res.stderr, "has no idem tables; run `idem migrate --database-url "+path+"`")

		res = idemAt(t, "migrate", "--database-url", path)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "applied 001 create_tables\n")
		res = idemAt(t, "migrate", "--database-url", path)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, path+" is up to date")
		res = idemAt(t, "dlq", "report", "--database-url", path)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "no pending dead letters\n", res.stdout)
	})

	t.Run("BadFlags", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--max-pending", "-2"}, "--max-pending must be -1 (no limit) or more"},
			{[]string{"--max-age", "-1h"}, "--max-age must not be negative"},
			{[]string{"--max-age", "a week"}, `invalid value "a week" for flag -max-age: "a week" is not a duration such as 36h or 7d`},
			{[]string{"--format", "csv"}, `--format must be table or json, got "csv"`},
			{[]string{"--since", "last tuesday"}, `--since: "last tuesday" is neither a time`},
		} {
			res := idemAt(t, append(append([]string{"dlq", "check"}, tc.args...), "--database-url", "postgres://postgres@127.0.0.1:1/test")...)
			require.Equal(t, 2, res.code, res.stderr)
			require.Contains(t, res.stderr, tc.want)
		}
	})
}

// auditRows reads the audit table of a PostgreSQL schema.
func auditRows(t *testing.T, schema string) []dlq.AuditEntry {
	t.Helper()
	store, err := postgres.New(testdb.Pool(t), postgres.Config{Schema: schema})
	require.NoError(t, err)
	entries, err := store.Audit(t.Context(), dlq.AuditFilter{})
	require.NoError(t, err)
	return entries
}

func statuses(t *testing.T, schema string) map[int64]string {
	t.Helper()
	rows, err := testdb.Pool(t).Query(t.Context(), "SELECT id, status FROM "+pgx.Identifier{schema, "dead_letters"}.Sanitize())
	require.NoError(t, err)
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var s string
		require.NoError(t, rows.Scan(&id, &s))
		out[id] = s
	}
	require.NoError(t, rows.Err())
	return out
}

func TestDiscardAndResolve(t *testing.T) {
	t.Parallel()

	t.Run("DiscardNeedsAReason", func(t *testing.T) {
		t.Parallel()
		db := pgArgs(t, goldenRows)
		schema := db[3]
		before := statuses(t, schema)
		for _, args := range [][]string{{"1", "--yes"}, {"--consumer", "billing", "--yes"}, {"1", "--reason", " ", "--yes"}} {
			res := idemAt(t, append(append([]string{"dlq", "discard"}, args...), db...)...)
			require.Equal(t, 2, res.code, res.stderr)
			require.Contains(t, res.stderr, "idem: --reason is required: say why, for the audit\n")
			require.Empty(t, res.stdout)
		}
		require.Equal(t, before, statuses(t, schema))
		require.Empty(t, auditRows(t, schema))
	})

	t.Run("EveryChangeOneAuditRow", func(t *testing.T) {
		t.Parallel()
		db := pgArgs(t, goldenRows)
		schema := db[3]

		// A dry run changes nothing.
		res := idemAt(t, append([]string{"dlq", "discard", "--consumer", "billing", "--fingerprint", "3f2a9c1d7e6b5a40", "--reason", "load test traffic"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "dry run: would discard 2 dead letters; nothing changed. Add --yes to discard them.\n")
		require.Empty(t, auditRows(t, schema))

		// A group, by filter: one audit row for both.
		res = idemAt(t, append([]string{"dlq", "discard", "--consumer", "billing", "--fingerprint", "3f2a9c1d7e6b5a40", "--reason", "load test traffic", "--yes"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Regexp(t, `^discarded 2 dead letters: 1, 2 \(audit entry \d+\)\n$`, res.stdout)
		audit := auditRows(t, schema)
		require.Len(t, audit, 1)
		require.Equal(t, dlq.ActionDiscard, audit[0].Action)
		require.Equal(t, []int64{1, 2}, audit[0].DeadLetterIDs)
		require.Equal(t, "load test traffic", audit[0].Reason)
		require.Equal(t, "consumer=billing fingerprint=3f2a9c1d7e6b5a40 status=pending", audit[0].Selector)
		require.NotEmpty(t, audit[0].OSUser)
		require.Equal(t, "postgres", audit[0].DBRole)
		host, _ := os.Hostname()
		require.Equal(t, host, audit[0].Host)

		// By ID, as JSON: one more row.
		res = idemAt(t, append([]string{"dlq", "resolve", "3", "2", "--reason", "refunded by hand", "--yes", "--format", "json"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		var out changeJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Equal(t, "resolve", out.Action)
		require.False(t, out.DryRun)
		require.Equal(t, []int64{2, 3}, out.Selected)
		require.Equal(t, []int64{2, 3}, out.Changed)
		require.Len(t, out.AuditIDs, 1)
		require.Nil(t, out.PublishURL)
		audit = auditRows(t, schema)
		require.Len(t, audit, 2)
		require.Equal(t, dlq.ActionResolve, audit[1].Action)
		require.Equal(t, "ids=2,3", audit[1].Selector)
		require.Equal(t, out.AuditIDs[0], audit[1].ID)

		// Nothing left to change: no row.
		res = idemAt(t, append([]string{"dlq", "resolve", "3", "--yes"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "nothing to resolve: the 1 dead letter selected are resolved already\n", res.stdout)
		require.Len(t, auditRows(t, schema), 2)

		require.Equal(t, map[int64]string{1: "discarded", 2: "resolved", 3: "resolved", 4: "pending", 5: "pending", 6: "discarded"}, statuses(t, schema))

		res = idemAt(t, append([]string{"dlq", "audit"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
		require.Len(t, lines, 3)
		require.Regexp(t, `^ID +AT +ACTION +OS USER +HOST +DB ROLE +SELECTOR +REASON +DEAD LETTERS$`, lines[0])
		require.Regexp(t, `^1 +\S+ +discard +\S+ +\S+ +postgres +consumer=billing fingerprint=3f2a9c1d7e6b5a40 status=pending +load test traffic +1 2$`, lines[1])
		res = idemAt(t, append([]string{"dlq", "audit", "--id", "3", "--format", "json"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, `"action": "resolve"`)
		require.NotContains(t, res.stdout, `"action": "discard"`)

		res = idemAt(t, append([]string{"dlq", "show", "2"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Regexp(t, `(?s)audit:\n  #1 \S+ discard by .*: load test traffic\n  #2 \S+ resolve by .*, ids=2,3: refunded by hand\n$`, res.stdout)
	})

	t.Run("Selection", func(t *testing.T) {
		t.Parallel()
		db := pgArgs(t, goldenRows)
		for _, tc := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"dlq", "resolve", "--yes"}, 2, "select the dead letters: give their IDs, filters such as --consumer and --fingerprint, or --all"},
			{[]string{"dlq", "resolve", "99", "--yes"}, 1, "idem: dead letter 99 not found in "},
			{[]string{"dlq", "resolve", "1", "--consumer", "shipping", "--yes"}, 1, "idem: dead letter 1 (pending) is not selected by the filters: consumer=shipping"},
			{[]string{"dlq", "resolve", "one"}, 2, `"one" is not a dead-letter ID`},
			{[]string{"dlq", "show", "99"}, 1, "idem: dead letter 99 not found in "},
			{[]string{"dlq", "show"}, 2, "dlq show takes one dead-letter ID, got 0 arguments"},
			{[]string{"dlq", "list", "--status", "open"}, 2, `--status must be pending, replayed, discarded, resolved or all, got "open"`},
			{[]string{"dlq", "report", "--since", "2026-01-10", "--until", "2026-01-09"}, 2, "--since 2026-01-10T00:00:00Z is not before --until 2026-01-09T00:00:00Z"},
			{[]string{"dlq", "audit", "--action", "delete"}, 2, `--action must be replay, discard or resolve, got "delete"`},
		} {
			res := idemAt(t, append(tc.args, db...)...)
			require.Equal(t, tc.code, res.code, "%v: %s", tc.args, res.stderr)
			require.Contains(t, res.stderr, tc.want, tc.args)
		}

		// --all with the default status: every pending one, in a dry run.
		res := idemAt(t, append([]string{"dlq", "resolve", "--all"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, "dry run: would resolve 5 dead letters")
		res = idemAt(t, append([]string{"dlq", "resolve", "--all", "--limit", "2", "--format", "json"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, `"selector": "status=pending limit=2"`)
		require.Contains(t, res.stdout, "\"selected\": [\n    1,\n    2\n  ]")
		// Filters by time.
		res = idemAt(t, append([]string{"dlq", "list", "--since", "24h", "--format", "csv"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, 4, strings.Count(res.stdout, "\n"), res.stdout) // header + 3 since 2026-01-09T12:00
		res = idemAt(t, append([]string{"dlq", "list", "--until", "2026-01-09", "--status", "all", "--format", "csv"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, 3, strings.Count(res.stdout, "\n"), res.stdout)
		res = idemAt(t, append([]string{"dlq", "report", "--event-type", "OrderPlaced", "--topic", "orders", "--format", "json"}, db...)...)
		require.Equal(t, 0, res.code, res.stderr)
		require.Contains(t, res.stdout, `"dead_letters": 3`)
	})
}

func TestDLQHelp(t *testing.T) {
	t.Parallel()
	res := idem(t, "dlq", "-h")
	require.Equal(t, 0, res.code)
	for _, cmd := range []string{"report", "list", "show [flags] ID", "replay [flags] [ID...]", "discard", "resolve", "check", "audit"} {
		require.Contains(t, res.stdout, "dlq "+cmd)
	}
	for _, cmd := range []string{"report", "list", "show", "replay", "discard", "resolve", "check", "audit"} {
		res := idem(t, "dlq", cmd, "-h")
		require.Equal(t, 0, res.code, cmd)
		require.Contains(t, res.stdout, "Usage:\n  idem dlq "+cmd, cmd)
		require.Contains(t, res.stdout, "Exit codes:", cmd)
	}
	res = idem(t, "dlq", "check", "-h")
	require.Contains(t, res.stdout, "--max-pending N")
	require.Contains(t, res.stdout, "--max-age DURATION")
	require.NotContains(t, res.stdout, "--status")
	res = idem(t, "dlq", "discard", "-h")
	require.Contains(t, res.stdout, "(required)")
}

// TestHugeCounts gives every flag that takes a count values near the integer maximum:
// each means "no limit", on both stores, and a negative one stays a usage error.
func TestHugeCounts(t *testing.T) {
	t.Parallel()
	for _, backend := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"PostgreSQL", func(t *testing.T) []string { return pgArgs(t, goldenRows) }},
		{"SQLite", func(t *testing.T) []string { return []string{"--database-url", "sqlite:" + sqliteDB(t, goldenRows)} }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db := backend.args(t)
			run := func(args ...string) result {
				t.Helper()
				return idemAt(t, append(args, db...)...)
			}
			res := run("dlq", "resolve", "5", "--yes", "--reason", "an audit entry to list")
			require.Equal(t, 0, res.code, res.stderr)

			for _, n := range []string{"9223372036854775807", "9223372036854775806", "2147483648", "2147483647", fmt.Sprint(int64(1) << 40)} {
				res := run("dlq", "list", "--limit", n, "--format", "json")
				require.Equal(t, 0, res.code, "list --limit %s: %s", n, res.stderr)
				var list listJSON
				require.NoError(t, json.Unmarshal([]byte(res.stdout), &list))
				require.Len(t, list.DeadLetters, 4, n)
				require.Nil(t, list.NextAfterID, n)

				res = run("dlq", "audit", "--limit", n, "--format", "json")
				require.Equal(t, 0, res.code, "audit --limit %s: %s", n, res.stderr)
				var audit auditListJSON
				require.NoError(t, json.Unmarshal([]byte(res.stdout), &audit))
				require.Len(t, audit.Audit, 1, n)
				require.Nil(t, audit.NextAfterID, n)

				for _, cmd := range [][]string{{"dlq", "discard", "--reason", "r"}, {"dlq", "resolve"}, {"dlq", "replay", "--publish-url", "redis://127.0.0.1:1"}} {
					res = run(append(cmd, "--all", "--limit", n, "--format", "json")...)
					require.Equal(t, 0, res.code, "%v --limit %s: %s", cmd, n, res.stderr)
					var change changeJSON
					require.NoError(t, json.Unmarshal([]byte(res.stdout), &change))
					require.Len(t, change.Selected, 4, "%v --limit %s", cmd, n)
				}

				res = run("dlq", "check", "--max-pending", n)
				require.Equal(t, 0, res.code, "check --max-pending %s: %s", n, res.stderr)
				require.Contains(t, res.stdout, "OK: 4 pending dead letters", n)

				// The fixtures' reviewed dead letters are old: keep them for the next round.
				res = run("dedup", "prune", "--batch", n, "--dead-letter-retention", "-1", "--audit-retention", "-1")
				require.Equal(t, 0, res.code, "prune --batch %s: %s", n, res.stderr)
				require.Equal(t, "deleted 0 processed rows and 0 attempt counts older than 168h0m0s\nkept reviewed dead letters forever and kept the audit forever\n", res.stdout, n)
			}
			require.Len(t, auditOf(t, db), 1, "only dry runs after the first resolve")

			for _, args := range [][]string{
				{"dlq", "list", "--limit", "-1"},
				{"dlq", "list", "--limit", "-9223372036854775808"},
				{"dlq", "audit", "--limit", "-1"},
				{"dlq", "discard", "--all", "--reason", "r", "--limit", "-1", "--yes"},
				{"dlq", "resolve", "--all", "--limit", "-9223372036854775808", "--yes"},
				{"dlq", "replay", "--all", "--limit", "-1", "--publish-url", "redis://127.0.0.1:1"},
				{"dlq", "check", "--max-pending", "-9223372036854775808"},
				{"dedup", "prune", "--batch", "-1"},
				{"dlq", "list", "--limit", "9223372036854775808"},
			} {
				res := run(args...)
				require.Equal(t, 2, res.code, "%v: %s", args, res.stderr)
				require.Empty(t, res.stdout, args)
			}
			require.Len(t, auditOf(t, db), 1, "a usage error writes nothing")
		})
	}
}

// auditOf reads the audit entries of the store the database flags db name.
func auditOf(t *testing.T, db []string) []auditJSON {
	t.Helper()
	res := idemAt(t, append([]string{"dlq", "audit", "--format", "json"}, db...)...)
	require.Equal(t, 0, res.code, res.stderr)
	var audit auditListJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &audit))
	return audit.Audit
}

// hostileMetadata has keys that encoding/json alone would print alike (invalid UTF-8
// becomes U+FFFD), or that terminals would act on, and values that JSON text cannot
// hold as they are.
var hostileMetadata = map[string]string{
	"event_id":      "evt-md",
	"k\xff":         "invalid one",
	"k\xfe":         "invalid two",
	"k\ufffd":       "replacement character",
	"base64:azk=":   "looks encoded",
	"nul\x00key":    "nul in the key",
	"esc\x1b[2Jkey": "escape in the key",
	`esc\x1b[2Jkey`: "backslash, not an escape",
	"nul-value":     "a\x00b",
	"prefixed":      "base64:not really",
}

// uniqueKeys decodes the JSON document doc, failing on an object that has a key
// twice.
func uniqueKeys(t *testing.T, doc string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(doc))
	var walk func()
	walk = func() {
		tok, err := dec.Token()
		require.NoError(t, err)
		d, ok := tok.(json.Delim)
		if !ok {
			return
		}
		seen := map[string]bool{}
		for dec.More() {
			if d == '{' {
				k, err := dec.Token()
				require.NoError(t, err)
				require.False(t, seen[k.(string)], "key %q twice in %s", k, doc)
				seen[k.(string)] = true
			}
			walk()
		}
		_, err = dec.Token()
		require.NoError(t, err)
	}
	walk()
}

func TestMetadataKeysAreUnambiguous(t *testing.T) {
	t.Parallel()
	row := goldenRows[0]
	row.eventID, row.metadata = "evt-md", hostileMetadata
	for _, backend := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"PostgreSQL", func(t *testing.T) []string { return pgArgs(t, []seedRow{row}) }},
		{"SQLite", func(t *testing.T) []string { return []string{"--database-url", sqliteDB(t, []seedRow{row})} }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db := backend.args(t)
			want := dlq.SanitizeMetadata(hostileMetadata) // as every format shows it

			// JSON: no key twice, and dlq.DecodeMetadata reads back every key, byte for byte.
			for _, args := range [][]string{{"dlq", "show", "1"}, {"dlq", "list"}} {
				res := idemAt(t, append(append(args, "--format", "json"), db...)...)
				require.Equal(t, 0, res.code, res.stderr)
				uniqueKeys(t, res.stdout)
				var doc struct {
					DeadLetter  struct{ Metadata json.RawMessage }   `json:"dead_letter"`
					DeadLetters []struct{ Metadata json.RawMessage } `json:"dead_letters"`
				}
				require.NoError(t, json.Unmarshal([]byte(res.stdout), &doc))
				raw := doc.DeadLetter.Metadata
				if len(doc.DeadLetters) > 0 {
					raw = doc.DeadLetters[0].Metadata
				}
				got, err := dlq.DecodeMetadata(raw)
				require.NoError(t, err, string(raw))
				require.Equal(t, want, got, args)
				var compact bytes.Buffer
				require.NoError(t, json.Compact(&compact, raw))
				require.Contains(t, compact.String(), `"base64:a/8=":"invalid one"`, "k\\xff, as dlq.EncodeMetadata writes it")
				stored, err := dlq.EncodeMetadata(want)
				require.NoError(t, err)
				require.JSONEq(t, string(stored), string(raw), "as the stores write it")
			}

			// Every other format shows ten distinct keys.
			res := idemAt(t, append([]string{"dlq", "show", "1", "--format", "csv"}, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			rows, err := csv.NewReader(strings.NewReader(res.stdout)).ReadAll()
			require.NoError(t, err)
			keys := map[string]bool{}
			for _, r := range rows {
				if k, ok := strings.CutPrefix(r[0], "metadata."); ok {
					keys[k] = true
				}
			}
			require.Len(t, keys, len(hostileMetadata), res.stdout)
			require.True(t, keys["base64:a/8="], res.stdout)

			res = idemAt(t, append([]string{"dlq", "show", "1", "--format", "markdown"}, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			section := res.stdout[strings.Index(res.stdout, "### Metadata"):strings.Index(res.stdout, "### Payload")]
			keys = map[string]bool{}
			for _, l := range strings.Split(section, "\n") {
				if strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "| key ") && !strings.HasPrefix(l, "| --- ") {
					keys[strings.SplitN(l, " | ", 2)[0]] = true
				}
			}
			require.Len(t, keys, len(hostileMetadata), section)

			res = idemAt(t, append([]string{"dlq", "show", "1"}, db...)...)
			require.Equal(t, 0, res.code, res.stderr)
			requireInert(t, res.stdout)
			section = res.stdout[strings.Index(res.stdout, "\nmetadata:\n"):strings.Index(res.stdout, "\npayload")]
			keys = map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(section), "\n")[1:] {
				keys[strings.Fields(l)[0]] = true
			}
			require.Len(t, keys, len(hostileMetadata), section)
		})
	}
}

// TestHostileInputs gives the commands operator input they cannot store or match:
// NUL bytes and invalid UTF-8 in text flags, a reason longer than any audit entry
// needs, durations that overflow, IDs out of range. Each is a usage error (exit 2)
// that names the flag, and nothing is written.
func TestHostileInputs(t *testing.T) {
	t.Parallel()
	for _, backend := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"PostgreSQL", func(t *testing.T) []string { return pgArgs(t, goldenRows) }},
		{"SQLite", func(t *testing.T) []string { return []string{"--database-url", sqliteDB(t, goldenRows)} }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			db := backend.args(t)
			before := idemWith(t, map[string]string{envNow: testNow}, 5*time.Second, append([]string{"dlq", "list", "--status", "all", "--format", "json"}, db...)...)
			require.Equal(t, 0, before.code, before.stderr)

			for _, tc := range []struct {
				args []string
				want string
			}{
				{[]string{"dlq", "resolve", "1", "--yes", "--reason", "a\x00b"}, `--reason must be UTF-8 text without NUL bytes, got "a\x00b"`},
				{[]string{"dlq", "discard", "1", "--yes", "--reason", "a\xffb"}, `--reason must be UTF-8 text without NUL bytes, got "a\xffb"`},
				{[]string{"dlq", "replay", "1", "--yes", "--reason", "\xc3", "--publish-url", "redis://127.0.0.1:1"}, "--reason must be UTF-8 text"},
				{[]string{"dlq", "resolve", "1", "--yes", "--reason", strings.Repeat("é", 2049)}, "--reason must be at most 4096 bytes, got 4098"},
				{[]string{"dlq", "list", "--consumer", "a\xff"}, `--consumer must be UTF-8 text without NUL bytes, got "a\xff"`},
				{[]string{"dlq", "report", "--fingerprint", "f\x00"}, "--fingerprint must be UTF-8 text"},
				{[]string{"dlq", "resolve", "--topic", "t\xfe", "--yes"}, "--topic must be UTF-8 text"},
				{[]string{"dlq", "check", "--event-type", "\xff"}, "--event-type must be UTF-8 text"},
				{[]string{"dlq", "show", "1", "--redact-keys", "ssn,\xff"}, "--redact-keys must be UTF-8 text"},
				{[]string{"dlq", "check", "--max-age", "100000d2562047h"}, `"100000d2562047h" is out of range`},
				{[]string{"dlq", "check", "--max-age", "100001d"}, `"100001d" is out of range`},
				{[]string{"dlq", "list", "--since", "100000d2562047h"}, `--since: "100000d2562047h" is neither a time`},
				{[]string{"dlq", "audit", "--until", "-1h"}, `--until: "-1h" is a negative duration`},
				{[]string{"dlq", "check", "--max-age", "-1ns"}, "--max-age must not be negative"},
				{[]string{"dedup", "prune", "--retention", "2562048h"}, `invalid value "2562048h" for flag -retention`},
				{[]string{"dedup", "prune", "--replay-window", "-1ns"}, "--replay-window must not be negative"},
				{[]string{"dlq", "show", "0"}, `"0" is not a dead-letter ID: IDs are positive whole numbers`},
				{[]string{"dlq", "show", "-1"}, `"-1" is not a dead-letter ID: IDs are positive whole numbers`},
				{[]string{"dlq", "show", "--", "-1"}, `"-1" is not a dead-letter ID`},
				{[]string{"dlq", "resolve", "3", "-9223372036854775808", "--yes"}, `"-9223372036854775808" is not a dead-letter ID`},
				{[]string{"dlq", "resolve", "9223372036854775808", "--yes"}, `"9223372036854775808" is not a dead-letter ID`},
				{[]string{"dlq", "discard", "1,0", "--reason", "r", "--yes"}, `"0" is not a dead-letter ID`},
				{[]string{"dlq", "audit", "--id", "-1"}, "--id must be a dead-letter ID, got -1"},
				{[]string{"dlq", "audit", "--id", "9223372036854775808"}, `invalid value "9223372036854775808" for flag -id`},
				{[]string{"dlq", "list", "--after", "-1"}, "--after must not be negative, got -1"},
			} {
				args := append(slices.Clone(tc.args), db...)
				if i := slices.Index(tc.args, "--"); i >= 0 { // the database flags go before it
					args = slices.Concat(tc.args[:i], db, tc.args[i:])
				}
				res := idemWith(t, map[string]string{envNow: testNow}, 5*time.Second, args...)
				require.Equal(t, 2, res.code, "%q: %s", tc.args, res.stderr)
				require.Contains(t, res.stderr, tc.want, "%q", tc.args)
				require.Empty(t, res.stdout, "%q", tc.args)
				requireInert(t, res.stderr)
			}

			after := idemWith(t, map[string]string{envNow: testNow}, 5*time.Second, append([]string{"dlq", "list", "--status", "all", "--format", "json"}, db...)...)
			require.Equal(t, before.stdout, after.stdout, "nothing changed")
			require.Empty(t, auditOf(t, db), "nothing was written")

			// The largest values that are in range are taken.
			for _, args := range [][]string{
				{"dlq", "check", "--max-age", "100000d", "--max-pending", "-1"},
				{"dlq", "list", "--since", "100000d", "--until", "9999-12-31"},
				{"dlq", "show", "9223372036854775807"},
				{"dlq", "audit", "--id", "9223372036854775807", "--after", "9223372036854775807"},
				{"dedup", "prune", "--retention", "2562047h", "--replay-window", "2562047h"},
				{"dlq", "resolve", "1", "--reason", strings.Repeat("é", 2048)},
			} {
				res := idemWith(t, map[string]string{envNow: testNow}, 5*time.Second, append(args, db...)...)
				require.NotEqual(t, 2, res.code, "%q: %s", args, res.stderr)
				require.NotContains(t, res.stderr, "usage", "%q", args)
			}
		})
	}
}

func TestNULInSQLitePath(t *testing.T) {
	t.Parallel()
	for _, db := range []string{"sqlite:idem\x00.db", "idem\x00x.db"} {
		res := idem(t, "dlq", "report", "--database-url", db)
		require.Equal(t, 2, res.code, res.stderr)
		require.Contains(t, res.stderr, "holds a NUL byte")
		requireInert(t, res.stderr)
	}
}
