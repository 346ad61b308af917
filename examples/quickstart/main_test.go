package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
)

// expectedSummary derives what the report must say from the scenario's constants.
func expectedSummary(t *testing.T) map[string]int {
	t.Helper()
	require.Less(t, flakyFailures, maxAttempts, "the flaky order must go through within its attempts")
	copies := 0
	for n, extra := range redelivered {
		require.True(t, n >= firstOrder && n < firstOrder+validOrders && n != flakyOrder,
			"only orders that go through first time are redelivered, so every copy is a duplicate")
		copies += extra
	}
	poison := []int{notJSONOrder, negativeOrder, downOrder, noEventIDOrder}
	require.Len(t, poison, poisonMessages)
	return map[string]int{
		"published":          validOrders + copies + len(poison),
		"processed":          validOrders, // the flaky order included
		"duplicates skipped": copies,
		// The flaky order is retried after each of its failures; the order the gateway
		// always refuses after each attempt but its last.
		"retried attempts": flakyFailures + (maxAttempts - 1),
		"dead-lettered":    len(poison),
		// Dead letters by reason.
		string(dlq.ReasonPermanent): 2, // notJSONOrder, negativeOrder
		string(dlq.ReasonExhausted): 1, // downOrder
		string(dlq.ReasonMalformed): 1, // noEventIDOrder
	}
}

// requireReport checks the counts and the dead letters that run printed.
func requireReport(t *testing.T, out string) {
	t.Helper()
	for label, n := range expectedSummary(t) {
		var re *regexp.Regexp
		switch label {
		case string(dlq.ReasonPermanent), string(dlq.ReasonExhausted), string(dlq.ReasonMalformed):
			re = regexp.MustCompile(`(?m)^  ` + label + ` \(` + fmt.Sprint(n) + `\)$`)
		default:
			re = regexp.MustCompile(`(?m)^  ` + label + `: +` + fmt.Sprint(n) + `  `)
		}
		require.Regexp(t, re, out, "%s: want %d", label, n)
	}
	for n, reason := range map[int]dlq.Reason{notJSONOrder: dlq.ReasonPermanent, negativeOrder: dlq.ReasonPermanent, downOrder: dlq.ReasonExhausted} {
		attempts := "1 attempt:"
		if reason == dlq.ReasonExhausted {
			attempts = fmt.Sprintf("%d attempts:", maxAttempts)
		}
		require.Contains(t, out, fmt.Sprintf("    event %s of consumer %s, %s\n", eventID(n), consumerName, attempts))
	}
	require.Regexp(t, `(?m)^    event derived:[0-9a-f]{8}… of consumer billing, 1 attempt:$`, out)
	require.Contains(t, out, "total -500 cents is negative")
	require.Contains(t, out, "payment gateway unavailable (503)")
	require.Contains(t, out, "decode payload as main.OrderPlaced")
	require.LessOrEqual(t, bytes.Count([]byte(out), []byte("\n")), 40, "the output stays compact")
}

func TestQuickstartSQLite(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	db := filepath.Join(dir, "quickstart.db")
	// -database-url= keeps a developer's $IDEM_DATABASE_URL out of this test.
	args := []string{"-database-url=", "-db", db}

	var first bytes.Buffer
	require.NoError(t, run(ctx, args, &first), first.String())
	requireReport(t, first.String())
	require.Contains(t, first.String(), "SQLite "+db+" (a new file)")
	require.FileExists(t, filepath.Join(dir, "idem-quickstart.log"), "the log goes next to the database")

	// A second run starts from a clean file, and counts the same.
	var second bytes.Buffer
	require.NoError(t, run(ctx, args, &second), second.String())
	requireReport(t, second.String())
	require.Contains(t, second.String(), "the previous run's file was removed")
}

func TestQuickstartPostgres(t *testing.T) {
	t.Parallel()
	testdb.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testdb.Pool(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "quickstart_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		require.NoError(t, err)
	})
	args := []string{"-database-url", testdb.URL(), "-schema", schema, "-log", filepath.Join(t.TempDir(), "idem.log")}

	// The second run empties the schema's tables first, and counts the same.
	for range 2 {
		var out bytes.Buffer
		require.NoError(t, run(ctx, args, &out), out.String())
		requireReport(t, out.String())
		require.Contains(t, out.String(), "--schema "+schema)
	}
}
