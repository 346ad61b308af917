package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/internal/testdb"
	"github.com/idemkit/idem/postgres"
	"github.com/idemkit/idem/retry"
)

func TestHostileSchemaNamesAreRefused(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	for _, name := range []string{"x; DROP TABLE y", `"q"`, strings.Repeat("a", 64), "Upper", "1st", "a-b", "a.b", "ünï"} {
		_, err := postgres.New(pool, postgres.Config{Schema: name})
		require.Error(t, err, "%q", name)
		require.ErrorContains(t, err, "Schema", "the error names the setting")
		_, err = postgres.Migrate(context.Background(), pool, postgres.MigrateConfig{Schema: name})
		require.Error(t, err, "%q", name)
	}
	_, err := postgres.New(pool, postgres.Config{Schema: strings.Repeat("a", 63)})
	require.NoError(t, err, "63 bytes is the limit, not over it")
	_, err = postgres.New(nil, postgres.Config{})
	require.ErrorContains(t, err, "pool")
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	schema := "test_migrate_" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")[:4] + time.Now().Format("150405000")
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })

	store, err := postgres.New(pool, postgres.Config{Schema: schema})
	require.NoError(t, err)
	require.ErrorIs(t, store.Check(ctx), postgres.ErrNotMigrated, "New runs no DDL")
	_, err = store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e"}, "x")
	require.Error(t, err)
	require.Equal(t, retry.ClassInfrastructure, postgres.Classify(err), "a missing schema is not the message's fault")
	require.ErrorContains(t, err, "idem migrate")

	// Replicas starting together: each migration is applied once.
	var wg sync.WaitGroup
	applied := make([][]postgres.Migration, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { applied[i], errs[i] = postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema}) })
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	total := 0
	for _, a := range applied {
		total += len(a)
	}
	require.Equal(t, postgres.LatestVersion(), total)
	require.NoError(t, store.Check(ctx))

	again, err := postgres.Migrate(ctx, pool, postgres.MigrateConfig{Schema: schema})
	require.NoError(t, err)
	require.Empty(t, again)
}

func TestClassifySQLStates(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	tests := []struct {
		code string
		want retry.Class
	}{
		{"40001", retry.ClassTransient},
		{"40P01", retry.ClassTransient},
		{"55P03", retry.ClassTransient},
		{"57014", retry.ClassTransient},
		{"08006", retry.ClassInfrastructure},
		{"57P01", retry.ClassInfrastructure},
		{"53300", retry.ClassInfrastructure},
		{"42P01", retry.ClassInfrastructure},
		{"22P02", retry.ClassPermanent},
		{"23514", retry.ClassPermanent},
		{"54000", retry.ClassPermanent},
		{"23505", retry.ClassUnknown},
		{"P0001", retry.ClassUnknown},
	}
	for _, tt := range tests {
		_, err := pool.Exec(context.Background(), "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '"+tt.code+"'; END $$")
		require.Error(t, err, tt.code)
		require.Equal(t, tt.want, postgres.Classify(err), tt.code)
		wrapped := errors.Join(errors.New("handler"), err)
		require.Equal(t, tt.want, postgres.Classify(wrapped), "%s, wrapped", tt.code)
	}
	p := retry.Policy{Classify: postgres.Classify}
	_, err := pool.Exec(context.Background(), "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
	require.Equal(t, retry.ClassPermanent, p.Class(retry.Permanent(err)), "the handler's explicit intent wins")
	require.Equal(t, retry.ClassUnknown, postgres.Classify(nil))
	require.Equal(t, retry.ClassUnknown, postgres.Classify(errors.New("plain")))
}

// TestStoreFailuresOnTheDataArePermanent: when the store's own statements fail
// because of the data they were given (a NUL byte a text column refuses, a value too
// large for an index), the failure is the message's, never an outage: classified
// permanent, by the store's classifier and by behaviour alike, so that the message
// is dead-lettered instead of handed back forever.
func TestStoreFailuresOnTheDataArePermanent(t *testing.T) {
	t.Parallel()
	store, _ := testdb.Store(t)
	ctx := context.Background()
	bad := dedup.Key{Consumer: "c", EventID: "e\x00"}
	_, err := store.Run(ctx, bad, func(context.Context) error { return nil })
	requirePermanent(t, err, "22021")
	_, err = store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e"}, "cause \x00")
	requirePermanent(t, err, "22021")
	_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: "e", Topic: "t\xff"})
	requirePermanent(t, err, "22021")
	_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: "e", Fingerprint: randomText(t, 1<<16)})
	requirePermanent(t, err, "54000")
}

func requirePermanent(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, code, pgErr.Code)
	require.Equal(t, retry.ClassPermanent, postgres.Classify(err), "%v", err)
	require.Equal(t, retry.ClassPermanent, retry.Classify(err), "by behaviour: %v", err)
}

// randomText returns n bytes of incompressible hexadecimal text.
func randomText(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n/2)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func TestRunInsideFailedTransactionRollsBack(t *testing.T) {
	t.Parallel()
	store, pool := testdb.Store(t)
	ctx := context.Background()
	key := dedup.Key{Consumer: "c", EventID: "e"}
	// The handler swallows an error inside the transaction and returns nil: COMMIT
	// turns into ROLLBACK, which must be reported, not taken for success.
	_, err := store.Run(ctx, key, func(ctx context.Context) error {
		tx, _ := postgres.TxFromContext(ctx)
		_, _ = tx.Exec(ctx, "SELECT 1/0")
		return nil
	})
	require.ErrorIs(t, err, pgx.ErrTxCommitRollback)
	require.Equal(t, retry.ClassTransient, postgres.Classify(err))
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{store.Schema(), "processed"}.Sanitize()).Scan(&n))
	require.Zero(t, n, "the claim rolled back")
}

func TestPruneKeepsYoungRowsAndTheCrashGuardsCounts(t *testing.T) {
	t.Parallel()
	store, pool := testdb.Store(t)
	ctx := context.Background()
	s := pgx.Identifier{store.Schema()}.Sanitize()
	for _, q := range []string{
		"INSERT INTO " + s + ".processed (consumer, event_id, processed_at) VALUES ('c', 'old', now() - interval '8 days'), ('c', 'young', now() - interval '6 days')",
		"INSERT INTO " + s + ".started (consumer, event_id, started, last_started_at) VALUES ('c', 'old', 2, now() - interval '8 days'), ('c', 'young', 1, now())",
	} {
		_, err := pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	res, err := store.Prune(ctx, postgres.PruneConfig{BatchSize: 1})
	require.NoError(t, err)
	require.Equal(t, postgres.PruneResult{Processed: 1, Started: 1}, res)
	var left int
	require.NoError(t, pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM "+s+".processed) + (SELECT count(*) FROM "+s+".started)").Scan(&left))
	require.Equal(t, 2, left, "rows younger than the retention stay")

	_, err = store.Prune(ctx, postgres.PruneConfig{Retention: time.Hour, ReplayWindow: 24 * time.Hour})
	require.ErrorContains(t, err, "shorter than ReplayWindow")
	_, err = store.Prune(ctx, postgres.PruneConfig{DeadLetterRetention: 48 * time.Hour, AuditRetention: 24 * time.Hour})
	require.ErrorContains(t, err, "AuditRetention 24h0m0s is shorter than DeadLetterRetention 48h0m0s")
	_, err = store.Prune(ctx, postgres.PruneConfig{DeadLetterRetention: -3})
	require.ErrorContains(t, err, "DeadLetterRetention must be at least 1s, or -1")
}

// TestPruneReviewedDeadLettersAndTheAudit: reviewed dead letters go after their
// retention, the audit after its own, longer one; pending dead letters never.
func TestPruneReviewedDeadLettersAndTheAudit(t *testing.T) {
	t.Parallel()
	store, pool := testdb.Store(t)
	ctx := context.Background()
	s := pgx.Identifier{store.Schema()}.Sanitize()
	ids := map[string]int64{}
	for _, id := range []string{"pending-old", "resolved-old", "discarded-old", "resolved-young"} {
		d := &dlq.DeadLetter{Consumer: "c", EventID: id, Reason: dlq.ReasonExhausted}
		_, err := store.Put(ctx, d)
		require.NoError(t, err)
		ids[id] = d.ID
	}
	actor := dlq.Actor{OSUser: "op", Host: "h"}
	_, err := store.Resolve(ctx, dlq.Change{IDs: []int64{ids["resolved-old"], ids["resolved-young"]}, Actor: actor, Selector: "ids"})
	require.NoError(t, err)
	_, err = store.Discard(ctx, dlq.Change{IDs: []int64{ids["discarded-old"]}, Actor: actor, Reason: "test order", Selector: "ids"})
	require.NoError(t, err)
	for _, q := range []string{
		"UPDATE " + s + ".dead_letters SET updated_at = now() - interval '40 days' WHERE event_id LIKE '%-old'",
		"UPDATE " + s + ".dead_letter_audit SET at = now() - interval '400 days' WHERE action = 'discard'",
	} {
		_, err := pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	count := func(q string) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, q).Scan(&n))
		return n
	}

	res, err := store.Prune(ctx, postgres.PruneConfig{BatchSize: 1})
	require.NoError(t, err)
	require.Equal(t, postgres.PruneResult{DeadLetters: 2, Audit: 1}, res, "the defaults: 30 days, and 365 for the audit")
	require.Equal(t, 1, count("SELECT count(*) FROM "+s+".dead_letters WHERE event_id = 'pending-old'"), "a pending dead letter is never pruned")
	require.Equal(t, 1, count("SELECT count(*) FROM "+s+".dead_letters WHERE event_id = 'resolved-young'"))
	require.Equal(t, 1, count("SELECT count(*) FROM "+s+".dead_letter_audit"), "the young audit row stays")

	_, err = pool.Exec(ctx, "UPDATE "+s+".dead_letters SET updated_at = now() - interval '10 years'")
	require.NoError(t, err)
	res, err = store.Prune(ctx, postgres.PruneConfig{DeadLetterRetention: -1, AuditRetention: -1})
	require.NoError(t, err)
	require.Zero(t, res, "-1 keeps them forever")
}
