package sqlite_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite" // a second handle on the file, as another process would have

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
	"github.com/idemkit/idem/sqlite"
)

// timeLayout is how the store writes times: UTC text with milliseconds.
const timeLayout = "2006-01-02T15:04:05.000Z"

func count(t *testing.T, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(query, args...).Scan(&n))
	return n
}

func exec(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	_, err := db.Exec(query, args...)
	require.NoError(t, err)
}

func claim(t *testing.T, store *sqlite.Store, consumer, eventID string) {
	t.Helper()
	claimed, err := store.Run(context.Background(), dedup.Key{Consumer: consumer, EventID: eventID}, func(context.Context) error { return nil })
	require.NoError(t, err)
	require.True(t, claimed)
}

// otherProcess opens a second database handle on the store's file, outside the
// store, as the idem command or another process would.
func otherProcess(t *testing.T, store *sqlite.Store) *sql.DB {
	t.Helper()
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(store.Path()), RawQuery: "_pragma=busy_timeout(5000)"}
	db, err := sql.Open("sqlite", u.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RejectsBadConfig", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "idem.db")
		for _, tc := range []struct {
			path string
			cfg  sqlite.Config
			want string
		}{
			{path, sqlite.Config{ErrorHistory: -1}, "Config.ErrorHistory must be at least 1, got -1"},
			{path, sqlite.Config{BusyTimeout: -time.Second}, "Config.BusyTimeout must be at least 1ms, got -1s"},
			{"", sqlite.Config{}, "empty"},
			{":memory:", sqlite.Config{}, "in-memory databases"},
			{"file:" + path, sqlite.Config{}, "plain file path"},
		} {
			_, err := sqlite.Open(ctx, tc.path, tc.cfg)
			require.ErrorContains(t, err, tc.want)
		}
		_, err := os.Stat(path)
		require.ErrorIs(t, err, fs.ErrNotExist, "a refused Open creates nothing")
	})

	t.Run("MissingDirectoryIsInfrastructure", func(t *testing.T) {
		t.Parallel()
		_, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "missing", "idem.db"), sqlite.Config{})
		require.Error(t, err)
		require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(err))
	})

	t.Run("PathNeedsNoEscaping", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "a b?c#d%20e.db")
		store, err := sqlite.Open(ctx, path, sqlite.Config{Migrate: true})
		require.NoError(t, err)
		claim(t, store, "c", "e1")
		require.NoError(t, store.Close())
		_, err = os.Stat(path)
		require.NoError(t, err, "the file has exactly the given name")
	})

	t.Run("WALAndPragmas", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{BusyTimeout: 1500 * time.Millisecond})
		db := store.DB()
		var mode string
		var sync, busy, fk int
		require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
		require.NoError(t, db.QueryRow("PRAGMA synchronous").Scan(&sync))
		require.NoError(t, db.QueryRow("PRAGMA busy_timeout").Scan(&busy))
		require.NoError(t, db.QueryRow("PRAGMA foreign_keys").Scan(&fk))
		require.Equal(t, "wal", mode)
		require.Equal(t, 2, sync, "synchronous=FULL: a commit is on disk when it returns")
		require.Equal(t, 1500, busy)
		require.Equal(t, 1, fk)
	})

	t.Run("WithoutMigrateRunsNoDDL", func(t *testing.T) {
		t.Parallel()
		store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{})
		require.NoError(t, err)
		defer store.Close()
		require.Zero(t, count(t, store.DB(), "SELECT count(*) FROM sqlite_schema"))
		require.ErrorIs(t, store.Check(ctx), sqlite.ErrNotMigrated)

		_, err = store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
		require.ErrorContains(t, err, "is the database migrated?")
		require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(err), "a missing table is not the message's fault")
	})
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("IsIdempotent", func(t *testing.T) {
		t.Parallel()
		store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "idem.db"), sqlite.Config{})
		require.NoError(t, err)
		defer store.Close()
		applied, err := sqlite.Migrate(ctx, store.DB())
		require.NoError(t, err)
		require.Len(t, applied, sqlite.LatestVersion())
		for i, m := range applied {
			require.Equal(t, i+1, m.Version, "migrations apply in order")
		}
		require.NoError(t, store.Check(ctx))

		applied, err = sqlite.Migrate(ctx, store.DB())
		require.NoError(t, err)
		require.Empty(t, applied, "a second Migrate applies nothing")
		require.Equal(t, sqlite.LatestVersion(), count(t, store.DB(), "SELECT count(*) FROM schema_migrations"))
		require.Equal(t, sqlite.LatestVersion(), count(t, store.DB(), "SELECT max(version) FROM schema_migrations"))
	})

	t.Run("ConcurrentMigratesApplyOnce", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "idem.db")
		stores := make([]*sqlite.Store, 4)
		for i := range stores {
			s, err := sqlite.Open(ctx, path, sqlite.Config{})
			require.NoError(t, err)
			defer s.Close()
			stores[i] = s
		}
		applied := make([][]sqlite.Migration, len(stores))
		errs := make([]error, len(stores))
		done := make(chan int)
		for i, s := range stores {
			go func() { applied[i], errs[i] = sqlite.Migrate(ctx, s.DB()); done <- i }()
		}
		for range stores {
			<-done
		}
		require.NoError(t, errors.Join(errs...))
		n := 0
		for _, a := range applied {
			n += len(a)
		}
		require.Equal(t, sqlite.LatestVersion(), n, "each migration is applied exactly once")
	})

	t.Run("EmbeddedFiles", func(t *testing.T) {
		t.Parallel()
		ups, err := fs.Glob(sqlite.Migrations(), "*.up.sql")
		require.NoError(t, err)
		require.Len(t, ups, sqlite.LatestVersion(), "one file per version")
		for i, up := range ups {
			require.True(t, strings.HasPrefix(up, fmt.Sprintf("%03d_", i+1)), "%s is numbered in sequence", up)
			_, err := fs.Stat(sqlite.Migrations(), strings.TrimSuffix(up, ".up.sql")+".down.sql")
			require.NoError(t, err, "%s has a down migration", up)
		}
	})

	t.Run("DownUndoesUp", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		downs, err := fs.Glob(sqlite.Migrations(), "*.down.sql")
		require.NoError(t, err)
		slices.Reverse(downs)
		for _, name := range downs {
			down, err := fs.ReadFile(sqlite.Migrations(), name)
			require.NoError(t, err)
			exec(t, store.DB(), string(down))
		}
		require.Zero(t, count(t, store.DB(), "SELECT count(*) FROM sqlite_schema WHERE name IN ('processed', 'attempts', 'dead_letters')"))
	})
}

func TestRecordFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("KeepsABoundedHistoryNewestFirst", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{ErrorHistory: 3})
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		for i := 1; i <= 5; i++ {
			n, err := store.RecordFailure(ctx, key, fmt.Sprintf("failure %d", i))
			require.NoError(t, err)
			require.Equal(t, i, n)
		}
		var raw, first, last, lastError string
		require.NoError(t, store.DB().QueryRow("SELECT errors, first_failure_at, last_failure_at, last_error FROM attempts").
			Scan(&raw, &first, &last, &lastError))
		var history []struct{ At, Error string }
		require.NoError(t, json.Unmarshal([]byte(raw), &history))
		require.Len(t, history, 3)
		require.Equal(t, []string{"failure 5", "failure 4", "failure 3"}, []string{history[0].Error, history[1].Error, history[2].Error})
		require.Equal(t, "failure 5", lastError)
		for i, h := range history {
			at, err := time.Parse(timeLayout, h.At)
			require.NoError(t, err, "times are UTC with milliseconds: %q", h.At)
			require.WithinDuration(t, time.Now(), at, time.Minute)
			if i > 0 {
				require.LessOrEqual(t, h.At, history[i-1].At, "newest first")
			}
		}
		require.Equal(t, history[0].At, last)
		require.LessOrEqual(t, first, history[2].At, "the first failure stays the first")
	})

	t.Run("DeadLetterTakesTimesAndHistoryFromAttempts", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		key := dedup.Key{Consumer: "c", EventID: "e1"}
		_, err := store.RecordFailure(ctx, key, "first")
		require.NoError(t, err)
		exec(t, store.DB(), "UPDATE attempts SET first_failure_at = '2020-01-02T03:04:05.678Z'")
		_, err = store.RecordFailure(ctx, key, "second")
		require.NoError(t, err)

		d := &dlq.DeadLetter{Consumer: "c", EventID: "e1", Reason: dlq.ReasonExhausted, Error: "second", Attempts: 2}
		created, err := store.Put(ctx, d)
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, time.Date(2020, 1, 2, 3, 4, 5, 678e6, time.UTC), d.FirstFailedAt)
		require.WithinDuration(t, time.Now(), d.LastFailedAt, time.Minute)
		require.False(t, d.DeadLetteredAt.Before(d.LastFailedAt))
		var history string
		require.NoError(t, store.DB().QueryRow("SELECT history FROM dead_letters").Scan(&history))
		require.Regexp(t, `^\[\{"at":"[^"]+","error":"second"\},\{"at":"[^"]+","error":"first"\}\]$`, history)
	})

	t.Run("DeadLetterWithoutAttemptsUsesTheDatabaseClock", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		d := &dlq.DeadLetter{Consumer: "c", EventID: "e1", Reason: dlq.ReasonMalformed, Error: "no id"}
		_, err := store.Put(ctx, d)
		require.NoError(t, err)
		require.WithinDuration(t, time.Now(), d.FirstFailedAt, time.Minute)
		require.Equal(t, d.FirstFailedAt, d.LastFailedAt)
		require.Equal(t, time.UTC, d.FirstFailedAt.Location())
	})
}

func TestPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const old = "2020-01-01T00:00:00.000Z"

	t.Run("DeletesOnlyOldRows", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		db := store.DB()
		for i := range 5 {
			claim(t, store, "c", fmt.Sprintf("old-%d", i))
			claim(t, store, "c", fmt.Sprintf("new-%d", i))
		}
		exec(t, db, "UPDATE processed SET processed_at = ?1 WHERE event_id LIKE 'old-%'", old)
		for _, id := range []string{"old-a", "old-dead", "new-a"} {
			_, err := store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: id}, "boom")
			require.NoError(t, err)
		}
		exec(t, db, "UPDATE attempts SET last_failure_at = ?1 WHERE event_id LIKE 'old-%'", old)
		_, err := store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: "old-dead", Reason: dlq.ReasonExhausted})
		require.NoError(t, err)

		res, err := store.Prune(ctx, sqlite.PruneConfig{Retention: time.Hour, ReplayWindow: time.Hour, BatchSize: 2})
		require.NoError(t, err)
		require.Equal(t, sqlite.PruneResult{Processed: 5, Attempts: 1}, res)
		require.Equal(t, 5, count(t, db, "SELECT count(*) FROM processed WHERE event_id LIKE 'new-%'"), "young rows stay")
		require.Zero(t, count(t, db, "SELECT count(*) FROM processed WHERE event_id LIKE 'old-%'"))
		require.Equal(t, 1, count(t, db, "SELECT count(*) FROM attempts WHERE event_id = 'old-dead'"), "a pending dead letter keeps its attempts")
		require.Equal(t, 1, count(t, db, "SELECT count(*) FROM attempts WHERE event_id = 'new-a'"))

		res, err = store.Prune(ctx, sqlite.PruneConfig{})
		require.NoError(t, err)
		require.Zero(t, res, "the default retention of 7 days deletes nothing young")
	})

	t.Run("ReviewedDeadLettersAndTheAudit", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		db := store.DB()
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
		exec(t, db, "UPDATE dead_letters SET updated_at = ?1 WHERE event_id LIKE '%-old'", old)
		exec(t, db, "UPDATE dead_letter_audit SET at = ?1 WHERE action = 'discard'", old)

		res, err := store.Prune(ctx, sqlite.PruneConfig{DeadLetterRetention: time.Hour, AuditRetention: 2 * time.Hour, BatchSize: 1})
		require.NoError(t, err)
		require.Equal(t, sqlite.PruneResult{DeadLetters: 2, Audit: 1}, res)
		require.Equal(t, 1, count(t, db, "SELECT count(*) FROM dead_letters WHERE event_id = 'pending-old'"), "a pending dead letter is never pruned")
		require.Equal(t, 1, count(t, db, "SELECT count(*) FROM dead_letters WHERE event_id = 'resolved-young'"), "young rows stay")
		require.Equal(t, 1, count(t, db, "SELECT count(*) FROM dead_letter_audit WHERE action = 'resolve'"), "young audit rows stay")

		exec(t, db, "UPDATE dead_letters SET updated_at = ?1", old)
		exec(t, db, "UPDATE dead_letter_audit SET at = ?1", old)
		res, err = store.Prune(ctx, sqlite.PruneConfig{DeadLetterRetention: -1, AuditRetention: -1})
		require.NoError(t, err)
		require.Zero(t, res, "-1 keeps them forever")
	})

	t.Run("RefusesBadConfig", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		for _, tc := range []struct {
			cfg  sqlite.PruneConfig
			want string
		}{
			{sqlite.PruneConfig{Retention: time.Hour, ReplayWindow: 2 * time.Hour}, "PruneConfig.Retention 1h0m0s is shorter than ReplayWindow 2h0m0s"},
			{sqlite.PruneConfig{ReplayWindow: 30 * 24 * time.Hour}, "shorter than ReplayWindow"},
			{sqlite.PruneConfig{Retention: -time.Hour}, "PruneConfig.Retention must be positive"},
			{sqlite.PruneConfig{BatchSize: -1}, "PruneConfig.BatchSize must be at least 1"},
			{sqlite.PruneConfig{DeadLetterRetention: -2}, "PruneConfig.DeadLetterRetention must be at least 1s, or -1"},
			{sqlite.PruneConfig{DeadLetterRetention: time.Millisecond}, "PruneConfig.DeadLetterRetention must be at least 1s"},
			{sqlite.PruneConfig{AuditRetention: -time.Hour}, "PruneConfig.AuditRetention must be at least 1s, or -1"},
			{sqlite.PruneConfig{DeadLetterRetention: 48 * time.Hour, AuditRetention: 24 * time.Hour}, "AuditRetention 24h0m0s is shorter than DeadLetterRetention 48h0m0s"},
			{sqlite.PruneConfig{DeadLetterRetention: -1, AuditRetention: 24 * time.Hour}, "is shorter than DeadLetterRetention -1ns"},
		} {
			_, err := store.Prune(ctx, tc.cfg)
			require.ErrorContains(t, err, tc.want)
		}
	})
}

func TestStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := testStore(t, sqlite.Config{})

	st, err := store.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, sqlite.Stats{}, st, "an empty store")

	claim(t, store, "c", "e1")
	claim(t, store, "c", "e2")
	exec(t, store.DB(), "UPDATE processed SET processed_at = '2021-06-07T08:09:10.123Z' WHERE event_id = 'e1'")
	_, err = store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e3"}, "boom")
	require.NoError(t, err)
	for _, id := range []string{"d1", "d2", "d3"} {
		_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: id, Reason: dlq.ReasonPermanent})
		require.NoError(t, err)
	}
	exec(t, store.DB(), "UPDATE dead_letters SET status = 'resolved' WHERE event_id = 'd3'")

	st, err = store.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Processed)
	require.Equal(t, time.Date(2021, 6, 7, 8, 9, 10, 123e6, time.UTC), st.OldestProcessed)
	require.Equal(t, int64(1), st.Attempts)
	require.Equal(t, int64(2), st.PendingDeadLetters)
	require.WithinDuration(t, time.Now(), st.OldestPending, time.Minute)
}

func TestDurable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "idem.db")
	store, err := sqlite.Open(ctx, path, sqlite.Config{Migrate: true})
	require.NoError(t, err)
	claim(t, store, "c", "e1")
	_, err = store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e2"}, "boom")
	require.NoError(t, err)
	in := &dlq.DeadLetter{Consumer: "c", EventID: "e2", Payload: []byte{0, 1, 2}, Reason: dlq.ReasonExhausted, Error: "boom", Attempts: 1}
	_, err = store.Put(ctx, in)
	require.NoError(t, err)
	require.NoError(t, store.Close())

	store, err = sqlite.Open(ctx, path, sqlite.Config{})
	require.NoError(t, err)
	defer store.Close()
	require.NoError(t, store.Check(ctx), "the schema survives")
	claimed, err := store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
	require.NoError(t, err)
	require.False(t, claimed, "the claim survives: the redelivery is a duplicate")
	n, err := store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e2"}, "boom")
	require.NoError(t, err)
	require.Equal(t, 2, n, "the attempt count survives")
	got, err := store.DeadLetter(ctx, "c", "e2")
	require.NoError(t, err)
	require.Equal(t, in.ID, got.ID)
	require.Equal(t, []byte{0, 1, 2}, got.Payload)
	require.Equal(t, in.FirstFailedAt, got.FirstFailedAt)
}

func TestConcurrency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("WritersQueueForTheBusyTimeoutThenFailTransiently", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{BusyTimeout: 50 * time.Millisecond})
		inside, release := make(chan struct{}), make(chan struct{})
		done := make(chan error)
		go func() {
			_, err := store.Run(ctx, dedup.Key{Consumer: "c", EventID: "slow"}, func(context.Context) error {
				close(inside)
				<-release
				return nil
			})
			done <- err
		}()
		<-inside
		_, err := store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "other"}, "boom")
		require.ErrorIs(t, err, sqlite.ErrBusy)
		require.Equal(t, retry.ClassTransient, sqlite.Classify(err))
		close(release)
		require.NoError(t, <-done)
		_, err = store.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "other"}, "boom")
		require.NoError(t, err, "the write slot is free again")
	})

	t.Run("CancelledWhileQueuedIsInfrastructure", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		inside, release := make(chan struct{}), make(chan struct{})
		done := make(chan error)
		go func() {
			_, err := store.Run(ctx, dedup.Key{Consumer: "c", EventID: "slow"}, func(context.Context) error {
				close(inside)
				<-release
				return nil
			})
			done <- err
		}()
		<-inside
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(10*time.Millisecond, cancel)
		called := false
		_, err := store.Run(cctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { called = true; return nil })
		require.ErrorIs(t, err, context.Canceled)
		require.False(t, called)
		require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(err))
		close(release)
		require.NoError(t, <-done)
	})

	t.Run("AnotherProcessHoldingTheLockIsWaitedFor", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{})
		other := otherProcess(t, store)
		conn, err := other.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO processed (consumer, event_id) VALUES ('c', 'e1')")
		require.NoError(t, err)

		type result struct {
			claimed bool
			err     error
		}
		done := make(chan result)
		go func() {
			claimed, err := store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
			done <- result{claimed, err}
		}()
		time.AfterFunc(20*time.Millisecond, func() { _, _ = conn.ExecContext(ctx, "COMMIT") })
		r := <-done
		require.NoError(t, r.err)
		require.False(t, r.claimed, "the claim waited for the other process's commit and found its row")
	})

	t.Run("AnotherProcessPastTheBusyTimeoutIsTransient", func(t *testing.T) {
		t.Parallel()
		store := testStore(t, sqlite.Config{BusyTimeout: 20 * time.Millisecond})
		conn, err := otherProcess(t, store).Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		require.NoError(t, err)
		defer conn.ExecContext(ctx, "ROLLBACK") //nolint:errcheck

		_, err = store.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
		require.Error(t, err)
		require.Equal(t, retry.ClassTransient, sqlite.Classify(err), "SQLITE_BUSY: %v", err)
		_, err = store.Put(ctx, &dlq.DeadLetter{Consumer: "c", EventID: "e1"})
		require.Equal(t, retry.ClassTransient, sqlite.Classify(err), "SQLITE_BUSY: %v", err)
	})
}

func TestClassify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := testStore(t, sqlite.Config{})
	exec(t, store.DB(), "CREATE TABLE notes (body TEXT NOT NULL CHECK (length(body) < 10), n INTEGER) STRICT")
	handlerErr := func(query string, args ...any) error {
		t.Helper()
		var herr error
		_, err := store.Run(ctx, dedup.Key{Consumer: "c", EventID: query}, func(ctx context.Context) error {
			tx, _ := sqlite.TxFromContext(ctx)
			_, herr = tx.ExecContext(ctx, query, args...)
			return herr
		})
		require.Equal(t, herr, err, "Run returns the handler's error unchanged")
		return err
	}
	require.Equal(t, retry.ClassPermanent, sqlite.Classify(handlerErr("INSERT INTO notes (body) VALUES (NULL)")), "NOT NULL")
	require.Equal(t, retry.ClassPermanent, sqlite.Classify(handlerErr("INSERT INTO notes (body) VALUES ('far too long')")), "CHECK")
	require.Equal(t, retry.ClassPermanent, sqlite.Classify(handlerErr("INSERT INTO notes (body, n) VALUES ('x', 'not a number')")), "STRICT type")
	require.Equal(t, retry.ClassUnknown, sqlite.Classify(handlerErr("INSERT INTO nowhere VALUES (1)")), "a bug in the handler's SQL")
	require.Equal(t, retry.ClassUnknown, sqlite.Classify(nil))
	require.Equal(t, retry.ClassUnknown, sqlite.Classify(errors.New("boom")))
	require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(fmt.Errorf("wrapped: %w", context.Canceled)))
	require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(sql.ErrConnDone))

	closed := testStore(t, sqlite.Config{})
	require.NoError(t, closed.Close())
	_, err := closed.Run(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, func(context.Context) error { return nil })
	require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(err), "a closed store: %v", err)
	_, err = closed.RecordFailure(ctx, dedup.Key{Consumer: "c", EventID: "e1"}, "boom")
	require.Equal(t, retry.ClassInfrastructure, sqlite.Classify(err), "a closed store: %v", err)
	require.Equal(t, retry.ClassInfrastructure, closed.Classify(err), "the method is the function")
}
