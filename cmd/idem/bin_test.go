package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/sqlite"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds the idem command once per test run and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "idem-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "idem")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

// testNow is the clock of the golden outputs ($IDEM_NOW).
const testNow = "2026-01-10T12:00:00Z"

// exe runs the idem binary with args, in dir when it is not "", with a clean
// environment plus env, and returns what it printed and its exit code.
func exe(t *testing.T, dir string, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "USER=tester", "TZ=Europe/Paris"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run idem %v: %v", args, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// idemAt runs the binary at the golden clock.
func idemAt(t *testing.T, args ...string) result {
	t.Helper()
	return exe(t, "", map[string]string{envNow: testNow}, args...)
}

// seedRow is a dead letter written directly, with fixed times, for outputs that do
// not change between runs.
type seedRow struct {
	consumer, eventID, topic, eventType string
	payload                             []byte
	metadata                            map[string]string
	reason                              dlq.Reason
	err, fingerprint                    string
	attempts, count, replays            int
	status                              dlq.Status
	history                             []dlq.Failure
	deadLetteredAt                      string
}

func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// goldenRows are the dead letters of the golden tests: two of one failure group, one
// of another, a malformed one full of terminal escapes, one whose text would be a
// spreadsheet formula, and a discarded one.
var goldenRows = []seedRow{{
	consumer: "billing", eventID: "evt-1001", topic: "orders", eventType: "OrderPlaced",
	payload:  []byte(`{"id":"ord-1001","customer":"ada","total_cents":1250,"card":{"token":"tok_live_4242","last4":"4242"},"note":"from postgres://app:s3cret@db/orders","items":[{"sku":"sku-1","qty":2}],"gift":false,"coupon":null}`),
	metadata: map[string]string{"event_id": "evt-1001", "correlation_id": "corr-1001", "authorization": "REDACTED", "event_type": "OrderPlaced", "x-tenant": "acme"},
	reason:   dlq.ReasonExhausted, err: "charge order ord-1001: payment gateway unavailable (503)", fingerprint: "3f2a9c1d7e6b5a40",
	attempts: 3, count: 1, status: dlq.StatusPending,
	history: []dlq.Failure{
		{At: ts("2026-01-08T09:29:59Z"), Error: "charge order ord-1001: payment gateway unavailable (503)"},
		{At: ts("2026-01-08T09:29:58Z"), Error: "charge order ord-1001: payment gateway unavailable (503)"},
		{At: ts("2026-01-08T09:29:57Z"), Error: "charge order ord-1001: payment gateway timeout"},
	},
	deadLetteredAt: "2026-01-08T09:30:00Z",
}, {
	consumer: "billing", eventID: "evt-1002", topic: "orders", eventType: "OrderPlaced",
	payload:  []byte(`{"id":"ord-1002","customer":"grace","total_cents":1625}`),
	metadata: map[string]string{"event_id": "evt-1002", "correlation_id": "corr-1002"},
	reason:   dlq.ReasonExhausted, err: "charge order ord-1002: payment gateway unavailable (503)", fingerprint: "3f2a9c1d7e6b5a40",
	attempts: 3, count: 2, replays: 1, status: dlq.StatusPending,
	history:        []dlq.Failure{{At: ts("2026-01-09T09:59:59Z"), Error: "charge order ord-1002: payment gateway unavailable (503)"}},
	deadLetteredAt: "2026-01-09T10:00:00Z",
}, {
	consumer: "billing", eventID: "evt-1003", topic: "orders", eventType: "OrderPlaced",
	payload:  []byte(`{"id":"ord-1003","customer":"linus","total_cents":-500}`),
	metadata: map[string]string{"event_id": "evt-1003"},
	reason:   dlq.ReasonPermanent, err: "order ord-1003: total -500 cents is negative", fingerprint: "8c1e44b0a9d2f311",
	attempts: 1, count: 1, status: dlq.StatusPending,
	history:        []dlq.Failure{{At: ts("2026-01-10T11:15:00Z"), Error: "order ord-1003: total -500 cents is negative"}},
	deadLetteredAt: "2026-01-10T11:15:00Z",
}, {
	consumer: "shipping", eventID: "derived:5d41402abc4b2a76b9719d911017c592ae5c9e5d5c6c2f6e2a8e8e1b2c3d4e5f", topic: "orders", eventType: "",
	payload:  []byte("\x1b]0;pwned\x07\x1b[2J<order id=\"ord-1004\"/>\u009b31m\u202eevil"),
	metadata: map[string]string{"x-note": "\x1b[5mblink\x1b[0m", "api_key": "REDACTED"},
	reason:   dlq.ReasonMalformed, err: "dedup: invalid event ID \"\x1b[31mred\x1b[0m\u202e\": it is empty\r\nforged log line", fingerprint: "c0ffee0000000004",
	attempts: 1, count: 1, status: dlq.StatusPending,
	history:        []dlq.Failure{{At: ts("2026-01-10T11:45:00Z"), Error: "dedup: invalid event ID \"\x1b[31mred\x1b[0m\u202e\": it is empty\r\nforged log line"}},
	deadLetteredAt: "2026-01-10T11:45:00Z",
}, {
	consumer: "refunds", eventID: "=cmd|' /C calc'!A0", topic: "refunds", eventType: "@SUM(A1:A9)",
	payload:  []byte{0x00, 0xff, 0x10, 'x'},
	metadata: map[string]string{"event_id": "=cmd|' /C calc'!A0"},
	reason:   dlq.ReasonPermanent, err: "+1 is not a valid amount", fingerprint: "-1e1e1e1e1e1e1e1",
	attempts: 1, count: 1, status: dlq.StatusPending,
	history:        []dlq.Failure{{At: ts("2026-01-10T11:50:00Z"), Error: "+1 is not a valid amount"}},
	deadLetteredAt: "2026-01-10T11:50:00Z",
}, {
	consumer: "billing", eventID: "evt-0999", topic: "orders", eventType: "OrderPlaced",
	payload:  []byte(`{"id":"ord-0999"}`),
	metadata: map[string]string{"event_id": "evt-0999"},
	reason:   dlq.ReasonExhausted, err: "charge order ord-0999: payment gateway unavailable (503)", fingerprint: "3f2a9c1d7e6b5a40",
	attempts: 3, count: 1, replays: 1, status: dlq.StatusDiscarded,
	history:        []dlq.Failure{{At: ts("2026-01-05T08:00:00Z"), Error: "charge order ord-0999: payment gateway unavailable (503)"}},
	deadLetteredAt: "2026-01-05T08:00:00Z",
}}

// values returns the row's columns in the order of seedColumns.
func (r seedRow) values(t *testing.T, timeValue func(time.Time) any) []any {
	t.Helper()
	md, err := dlq.EncodeMetadata(r.metadata)
	require.NoError(t, err)
	history, err := json.Marshal(r.history)
	require.NoError(t, err)
	at := ts(r.deadLetteredAt)
	first, last := r.history[len(r.history)-1].At, r.history[0].At
	return []any{
		r.consumer, r.eventID, r.topic, r.consumer, "0b6f2a4e-5f63-4a1e-9d0e-1c1f7d0f9a11", r.payload, string(md),
		string(r.reason), r.err, r.fingerprint, r.attempts, "corr-" + strings.TrimPrefix(r.eventID, "evt-"),
		"4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "worker-7", r.eventType, "2", string(history),
		string(r.status), r.count, r.replays, timeValue(first), timeValue(last), timeValue(at), timeValue(at),
	}
}

const seedColumns = `consumer, event_id, topic, handler, message_uuid, payload, metadata, reason, error, fingerprint,
    attempts, correlation_id, trace_id, span_id, host, event_type, event_version, history, status, count,
    replay_count, first_failed_at, last_failed_at, dead_lettered_at, updated_at`

// seedPostgres writes rows into the schema's dead_letters table.
func seedPostgres(t *testing.T, schema string, rows []seedRow) {
	t.Helper()
	pool := testdb.Pool(t)
	q := `INSERT INTO ` + pgx.Identifier{schema, "dead_letters"}.Sanitize() + ` (` + seedColumns + `) VALUES
    ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18::jsonb, $19, $20, $21, $22, $23, $24, $25)`
	for _, r := range rows {
		_, err := pool.Exec(t.Context(), q, r.values(t, func(t time.Time) any { return t })...)
		require.NoError(t, err)
	}
}

// sqliteDB creates a migrated SQLite database in a new directory, seeded with rows,
// and returns its path.
func sqliteDB(t *testing.T, rows []seedRow) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "idem.db")
	store, err := sqlite.Open(t.Context(), path, sqlite.Config{Migrate: true})
	require.NoError(t, err)
	defer store.Close()
	q := `INSERT INTO dead_letters (` + seedColumns + `) VALUES
    (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)`
	for _, r := range rows {
		_, err := store.DB().ExecContext(t.Context(), q, r.values(t, func(t time.Time) any { return t.UTC().Format("2006-01-02T15:04:05.000Z") })...)
		require.NoError(t, err)
	}
	return path
}

// pgArgs returns the database flags of a fresh, migrated PostgreSQL schema seeded
// with rows.
func pgArgs(t *testing.T, rows []seedRow) []string {
	t.Helper()
	schema := testdb.Schema(t, testdb.Pool(t))
	seedPostgres(t, schema, rows)
	return []string{"--database-url", testdb.URL(), "--schema", schema}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./cmd/idem -run Golden -update to create it")
	require.Equal(t, string(want), got, "testdata/%s differs; rerun with -update if the change is intended", name)
}

// requireInert fails when out holds bytes a terminal would act on: C0 controls other
// than newline, ESC, BEL, DEL, C1 controls, or bidirectional overrides.
func requireInert(t *testing.T, out string) {
	t.Helper()
	for i, r := range out {
		if r == '\n' {
			continue
		}
		if needsEscape(r) {
			t.Fatalf("output holds %U at byte %d: %q", r, i, out[max(0, i-40):min(len(out), i+40)])
		}
	}
	require.NotContains(t, out, "\x1b")
}
