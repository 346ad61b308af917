package sqlite

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// DefaultErrorHistory is how many of the latest attempt errors a key keeps.
const DefaultErrorHistory = 10

// DefaultBusyTimeout is how long a write waits for the database's write lock by default.
const DefaultBusyTimeout = 5 * time.Second

// cleanupTimeout bounds a rollback that runs after the delivery's context ended.
const cleanupTimeout = 5 * time.Second

// nowSQL is the database clock as the store keeps times: UTC text with milliseconds,
// which sorts and compares as text.
const nowSQL = `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`

// Config configures a [Store].
type Config struct {
	// ErrorHistory is how many of the latest attempt errors are kept per event and
	// copied onto its dead letter. Defaults to DefaultErrorHistory.
	ErrorHistory int
	// BusyTimeout is how long a write waits for the database's write lock, held by
	// another write of this process or of another process (the idem command), before
	// it fails with a transient error. Defaults to DefaultBusyTimeout.
	BusyTimeout time.Duration
	// Migrate runs the pending migrations on Open. The embedded store is a local file
	// owned by the process that opens it, so examples and single-binary programs set
	// it; leave it false to migrate explicitly with [Migrate] or `idem migrate`, as
	// with PostgreSQL. Consuming never runs DDL either way. Defaults to false.
	Migrate bool
}

func (c Config) withDefaults() Config {
	c.ErrorHistory = cmp.Or(c.ErrorHistory, DefaultErrorHistory)
	c.BusyTimeout = cmp.Or(c.BusyTimeout, DefaultBusyTimeout)
	return c
}

func (c Config) validate() error {
	if c.ErrorHistory < 1 {
		return fmt.Errorf("sqlite: Config.ErrorHistory must be at least 1, got %d", c.ErrorHistory)
	}
	if c.BusyTimeout < time.Millisecond {
		return fmt.Errorf("sqlite: Config.BusyTimeout must be at least 1ms, got %s", c.BusyTimeout)
	}
	return nil
}

// Store is idem's embedded store on SQLite (modernc.org/sqlite, no cgo): it claims
// events in the transaction of the handler's writes (dedup.Store), counts failed
// attempts, and keeps dead letters (dlq.Store), in one local database file.
//
// A Store is safe for concurrent use. Its writes are serialized: SQLite has one
// writer at a time, so the store queues its own write transactions in-process and
// waits for other processes' through SQLite's busy timeout. See the package
// documentation for what that means for handlers.
type Store struct {
	db   *sql.DB
	cfg  Config
	path string
	sql  queries
	// writer is a one-slot semaphore held for every write transaction of this Store,
	// so that the process's writers queue in order instead of polling SQLite's lock.
	writer chan struct{}
	// instance is the number this Store's crash-guard start rows carry: the starts
	// of other Stores (other processes) are the ones that count as crashes.
	instance int64
}

var (
	_ dedup.Store         = (*Store)(nil)
	_ dlq.Store           = (*Store)(nil)
	_ dedup.StartRecorder = (*Store)(nil)
)

// Open opens the database file at path, creating it when it does not exist (its
// directory must exist), and returns a Store on it. Every connection uses WAL journal
// mode, synchronous=FULL (a commit is on disk before it returns, so an acked message
// survives a power loss), foreign keys and the configured busy timeout, and begins
// its transactions with BEGIN IMMEDIATE.
//
// Open runs no DDL unless cfg.Migrate is set: otherwise create the tables with
// [Migrate] or `idem migrate`, and call [Store.Check] at start-up to find out early
// when that was forgotten. Close the Store when done.
func Open(ctx context.Context, path string, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dsn, err := dataSourceName(path, cfg.BusyTimeout)
	if err != nil {
		return nil, err
	}
	connector, err := sqlite.NewConnector(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	s := &Store{
		db:       sql.OpenDB(connector),
		cfg:      cfg,
		path:     path,
		sql:      buildQueries(),
		writer:   make(chan struct{}, 1),
		instance: newInstance(),
	}
	if err := s.init(ctx); err != nil {
		_ = s.db.Close()
		return nil, err
	}
	return s, nil
}

// dataSourceName returns the modernc.org/sqlite DSN for the file at path: a file: URI
// of the absolute path, escaped, with the store's pragmas.
func dataSourceName(path string, busyTimeout time.Duration) (string, error) {
	switch {
	case path == "":
		return "", errors.New("sqlite: Open needs a database file path, got an empty one")
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		return "", fmt.Errorf("sqlite: Open needs a plain file path, got %q: in-memory databases and URIs are not supported", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	p := filepath.ToSlash(abs)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // a Windows drive letter: file:///C:/…
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: p, RawQuery: q.Encode()}
	return u.String(), nil
}

func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return &storeError{Op: "open " + s.path, Err: err}
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlite: open %s: journal mode is %q, not WAL; keep the database on a local file system", s.path, mode)
	}
	if s.cfg.Migrate {
		if _, err := Migrate(ctx, s.db); err != nil {
			return err
		}
	}
	return nil
}

type queries struct {
	claim, keptHash, recordFailure, putDeadLetter string
}

func buildQueries() queries {
	return queries{
		claim:    `INSERT INTO processed (consumer, event_id, payload_hash) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING`,
		keptHash: `SELECT payload_hash FROM processed WHERE consumer = ?1 AND event_id = ?2`,
		// The errors history is newest first, cut to ?4 entries.
		recordFailure: `INSERT INTO attempts AS a
    (consumer, event_id, attempts, first_failure_at, last_failure_at, last_error, errors)
SELECT ?1, ?2, 1, n.now, n.now, ?3, json_array(json_object('at', n.now, 'error', ?3))
FROM (SELECT ` + nowSQL + ` AS now) AS n
WHERE true
ON CONFLICT (consumer, event_id) DO UPDATE SET
    attempts        = a.attempts + 1,
    last_failure_at = excluded.last_failure_at,
    last_error      = excluded.last_error,
    errors          = (SELECT json_group_array(json(e.value) ORDER BY e.src, e.pos) FROM (
        SELECT src, pos, value FROM (
            SELECT 0 AS src, key AS pos, value FROM json_each(excluded.errors)
            UNION ALL
            SELECT 1, key, value FROM json_each(a.errors))
        ORDER BY src, pos LIMIT ?4) AS e)
RETURNING attempts`,
		putDeadLetter: `INSERT INTO dead_letters AS d
    (consumer, event_id, topic, handler, message_uuid, payload, metadata, reason, error,
     fingerprint, attempts, correlation_id, trace_id, span_id, host, event_type, event_version,
     history, first_failed_at, last_failed_at)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
    coalesce(a.errors, json_array(json_object('at', n.now, 'error', ?9))),
    coalesce(a.first_failure_at, n.now), coalesce(a.last_failure_at, n.now)
FROM (SELECT ` + nowSQL + ` AS now) AS n
LEFT JOIN attempts AS a ON a.consumer = ?1 AND a.event_id = ?2
WHERE true
ON CONFLICT (consumer, event_id) DO UPDATE SET
    topic            = excluded.topic,
    handler          = excluded.handler,
    message_uuid     = excluded.message_uuid,
    payload          = excluded.payload,
    metadata         = excluded.metadata,
    reason           = excluded.reason,
    error            = excluded.error,
    fingerprint      = excluded.fingerprint,
    attempts         = excluded.attempts,
    correlation_id   = excluded.correlation_id,
    trace_id         = excluded.trace_id,
    span_id          = excluded.span_id,
    host             = excluded.host,
    event_type       = excluded.event_type,
    event_version    = excluded.event_version,
    history          = excluded.history,
    last_failed_at   = excluded.last_failed_at,
    status           = 'pending',
    published_at     = NULL,
    count            = d.count + 1,
    dead_lettered_at = ` + nowSQL + `,
    updated_at       = ` + nowSQL + `
RETURNING id, count, status, first_failed_at, last_failed_at, dead_lettered_at`,
	}
}

// DB returns the store's database handle, for the application's own queries and for
// tuning the pool. Transactions begun on it start with BEGIN IMMEDIATE, as the store's
// do, unless they are read-only. Inside handlers, write through the transaction of
// [TxFromContext]: a write through DB waits for the handler's own transaction.
func (s *Store) DB() *sql.DB { return s.db }

// Path returns the database file path the store was opened with.
func (s *Store) Path() string { return s.path }

// Close closes the database. Calls that have not started when Close is called fail
// with an infrastructure error.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("sqlite: close %s: %w", s.path, err)
	}
	return nil
}

// Check verifies that the database is migrated to the version this build of idem
// expects. It returns an error wrapping [ErrNotMigrated] when it is not.
func (s *Store) Check(ctx context.Context) error {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'").Scan(&n)
	if err != nil {
		return &storeError{Op: "check " + s.path, Err: err}
	}
	if n == 0 {
		return fmt.Errorf("%w: %s has no idem tables; run `idem migrate`, sqlite.Migrate, or set Config.Migrate", ErrNotMigrated, s.path)
	}
	v, err := currentVersion(ctx, s.db)
	if err != nil {
		return err
	}
	if want := LatestVersion(); v < want {
		return fmt.Errorf("%w: %s is at version %d, this idem needs %d; run `idem migrate`, sqlite.Migrate, or set Config.Migrate", ErrNotMigrated, s.path, v, want)
	}
	return nil
}

// Classify is [Classify]; the consumer uses it for errors when its store is a *Store.
func (s *Store) Classify(err error) retry.Class { return Classify(err) }

// lockWriter takes the store's write slot, waiting at most Config.BusyTimeout, and
// returns the function that gives it back. Waiters are served in arrival order.
func (s *Store) lockWriter(ctx context.Context) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	release = func() { <-s.writer }
	select {
	case s.writer <- struct{}{}:
		return release, nil
	default:
	}
	t := time.NewTimer(s.cfg.BusyTimeout)
	defer t.Stop()
	select {
	case s.writer <- struct{}{}:
		return release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, ErrBusy
	}
}

// write runs fn in a write transaction (BEGIN IMMEDIATE) holding the store's write
// slot, and commits it when fn returns nil.
func (s *Store) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	release, err := s.lockWriter(ctx)
	if err != nil {
		return &storeError{Op: op, Err: err}
	}
	defer release()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return &storeError{Op: op, Err: err}
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return &storeError{Op: op, Err: err}
	}
	if err := tx.Commit(); err != nil {
		return &storeError{Op: op, Err: err}
	}
	return nil
}

// Run claims key in a new transaction and runs fn in it; see dedup.Store. The
// transaction begins with BEGIN IMMEDIATE, holding SQLite's write lock from the claim
// to the commit, so concurrent deliveries of one event run one after the other and
// the later ones find the claim: duplicates. fn finds the transaction with
// [TxFromContext]; it must not commit or roll it back, and should be short, since
// the store's other writes wait for it.
func (s *Store) Run(ctx context.Context, key dedup.Key, fn func(ctx context.Context) error) (bool, error) {
	release, err := s.lockWriter(ctx)
	if err != nil {
		return false, &storeError{Op: "claim " + key.String(), Err: err}
	}
	defer release()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, &storeError{Op: "begin " + key.String(), Err: err}
	}
	hash := dedup.PayloadHash(ctx)
	res, err := tx.ExecContext(ctx, s.sql.claim, key.Consumer, key.EventID, hash)
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	if err != nil {
		_ = tx.Rollback()
		return false, &storeError{Op: "claim " + key.String(), Err: err}
	}
	if n == 0 {
		err := s.checkConflict(ctx, tx, key, hash)
		_ = tx.Rollback()
		return false, err
	}
	o, err := s.checkOrder(ctx, tx, key)
	if err != nil && o.park != nil {
		if perr := s.parkQuarantined(ctx, tx, key, o); perr != nil {
			_ = tx.Rollback()
			return false, perr
		}
		if cerr := tx.Commit(); cerr != nil {
			return false, &storeError{Op: "commit the parking of " + key.String(), Err: cerr}
		}
		return false, err
	}
	if err != nil {
		_ = tx.Rollback()
		return false, s.orderRefused(ctx, o, err)
	}
	if err := fn(ContextWithTx(ctx, tx)); err != nil {
		_ = tx.Rollback() // a failed rollback discards the connection; nothing was committed
		return true, err
	}
	if err := s.moveMark(ctx, tx, key, o); err != nil {
		_ = tx.Rollback()
		return true, err
	}
	if err := tx.Commit(); err != nil {
		return true, &storeError{Op: "commit " + key.String(), Err: err}
	}
	return true, nil
}

// checkConflict compares the payload hash of a duplicate with the one kept for the
// processed event and reports a difference as a *dedup.ConflictingDuplicateError. It
// reads nothing when the duplicate has no hash; a failed read leaves the duplicate a
// plain one.
func (s *Store) checkConflict(ctx context.Context, tx *sql.Tx, key dedup.Key, hash []byte) error {
	if hash == nil {
		return nil
	}
	var kept []byte
	if err := tx.QueryRowContext(ctx, s.sql.keptHash, key.Consumer, key.EventID).Scan(&kept); err != nil {
		return nil
	}
	if kept != nil && !bytes.Equal(kept, hash) {
		return &dedup.ConflictingDuplicateError{Key: key, Kept: kept, Got: hash}
	}
	return nil
}

// RecordFailure counts one failed attempt of key; see dedup.Store. It runs as a single
// statement in its own transaction, so it commits even when the attempt's own
// transaction rolled back.
func (s *Store) RecordFailure(ctx context.Context, key dedup.Key, cause string) (int, error) {
	var n int
	err := s.write(ctx, "record failure of "+key.String(), func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, s.sql.recordFailure, key.Consumer, key.EventID, cause, s.cfg.ErrorHistory).Scan(&n)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// StartAttempt counts a started delivery for the crash guard; see dedup.StartRecorder.
// Each Store counts its starts as one process, and takes the unfinished starts of
// every other Store on the file for crashes: SQLite cannot tell whether another
// process still runs. Share one Store per process and file, and run the consumers
// of one file in one process, or a delivery another process still runs can be counted
// as a crash.
func (s *Store) StartAttempt(ctx context.Context, key dedup.Key) (int, error) {
	var n int
	err := s.write(ctx, "count the start of "+key.String(), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO started AS s (consumer, event_id, instance, started)
SELECT ?1, ?2, ?3, 1
WHERE NOT EXISTS (SELECT 1 FROM processed WHERE consumer = ?1 AND event_id = ?2)
ON CONFLICT (consumer, event_id, instance) DO UPDATE SET started = s.started + 1, last_started_at = `+nowSQL, key.Consumer, key.EventID, s.instance)
		if err != nil {
			return err
		}
		if counted, err := res.RowsAffected(); err != nil || counted == 0 {
			n = 0 // processed already
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT 1 + coalesce(sum(CASE WHEN instance = 0 THEN started ELSE 1 END), 0) FROM started
WHERE consumer = ?1 AND event_id = ?2 AND instance <> ?3`, key.Consumer, key.EventID, s.instance).Scan(&n)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// newInstance draws a Store's instance number, never 0 (the rows from before
// instances existed).
func newInstance() int64 {
	return rand.Int64N(math.MaxInt64) + 1
}

// FinishAttempt records that a delivery ended without crashing; see dedup.StartRecorder.
func (s *Store) FinishAttempt(ctx context.Context, key dedup.Key) error {
	return s.write(ctx, "count the end of "+key.String(), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "DELETE FROM started WHERE consumer = ?1 AND event_id = ?2", key.Consumer, key.EventID)
		return err
	})
}

// Put stores a dead letter, or updates the one of the same event; see dlq.Store. The
// payload is stored as a BLOB, byte for byte, and the metadata as JSON text
// (dlq.EncodeMetadata).
func (s *Store) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	md, err := dlq.EncodeMetadata(d.Metadata)
	if err != nil {
		return false, err
	}
	payload := d.Payload
	if payload == nil {
		payload = []byte{}
	}
	var status string
	err = s.write(ctx, "store dead letter "+d.Consumer+"/"+d.EventID, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, s.sql.putDeadLetter,
			d.Consumer, d.EventID, d.Topic, d.Handler, d.MessageUUID, payload, string(md),
			string(d.Reason), d.Error, d.Fingerprint, d.Attempts, d.CorrelationID, d.TraceID, d.SpanID,
			d.Host, d.EventType, d.EventVersion,
		).Scan(&d.ID, &d.Count, &status, timeText{&d.FirstFailedAt}, timeText{&d.LastFailedAt}, timeText{&d.DeadLetteredAt})
	})
	if err != nil {
		return false, err
	}
	d.Status = dlq.Status(status)
	return d.Count == 1, nil // an update always raises count above 1
}

type txKey struct{}

// ContextWithTx returns a copy of ctx that carries tx, as [Store.Run] hands it to the
// handler.
func ContextWithTx(ctx context.Context, tx *sql.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFromContext returns the transaction idem opened for the message being handled:
// write through it, and the writes commit together with the event's claim, once.
func TxFromContext(ctx context.Context) (*sql.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(*sql.Tx)
	return tx, ok && tx != nil
}

// timeText scans the store's UTC text times (and NULL, as the zero time).
type timeText struct{ t *time.Time }

func (x timeText) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case nil:
		*x.t = time.Time{}
		return nil
	case time.Time:
		*x.t = v.UTC()
		return nil
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return fmt.Errorf("sqlite: cannot read a %T as a time", src)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("sqlite: read time: %w", err)
	}
	*x.t = t
	return nil
}
