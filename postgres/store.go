package postgres

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/retry"
)

// DefaultSchema is the schema idem's tables live in unless Config.Schema says otherwise.
const DefaultSchema = "idem"

// DefaultErrorHistory is how many of the latest attempt errors a key keeps.
const DefaultErrorHistory = 10

// cleanupTimeout bounds a rollback that runs after the delivery's context ended.
const cleanupTimeout = 5 * time.Second

// Config configures a [Store].
type Config struct {
	// Schema is the schema holding idem's tables, created by [Migrate]. It must be a
	// plain lower-case identifier of at most 63 bytes. Defaults to DefaultSchema.
	Schema string
	// ErrorHistory is how many of the latest attempt errors are kept per event and
	// copied onto its dead letter. Defaults to DefaultErrorHistory.
	ErrorHistory int
	// IgnoreSubscriberTx turns off claiming inside the watermill-sql subscriber's
	// transaction. By default, when a message comes from a watermill-sql subscriber on
	// pgx, the claim and the handler's writes run in a savepoint of the subscriber's
	// own transaction, which then commits the claim, the effects and the consumed
	// offset together. Set it when the subscriber's database is not the one holding
	// idem's tables. Defaults to false.
	IgnoreSubscriberTx bool
}

func (c Config) withDefaults() Config {
	c.Schema = cmp.Or(c.Schema, DefaultSchema)
	c.ErrorHistory = cmp.Or(c.ErrorHistory, DefaultErrorHistory)
	return c
}

func (c Config) validate() error {
	if err := ValidateIdentifier("Schema", c.Schema); err != nil {
		return err
	}
	if c.ErrorHistory < 1 {
		return fmt.Errorf("postgres: ErrorHistory must be at least 1, got %d", c.ErrorHistory)
	}
	return nil
}

// Store is idem's PostgreSQL store: it claims events in the transaction of the
// handler's writes (dedup.Store), counts failed attempts, and keeps dead letters
// (dlq.Store). It is safe for concurrent use, and many consumer processes may share
// one database.
type Store struct {
	pool   *pgxpool.Pool
	cfg    Config
	schema string // quoted
	sql    queries
	order  orderQueries
	live   *liveness
}

var (
	_ dedup.Store         = (*Store)(nil)
	_ dlq.Store           = (*Store)(nil)
	_ dedup.StartRecorder = (*Store)(nil)
)

type queries struct {
	claim, keptHash, recordFailure, putDeadLetter, startAttempt, finishAttempt string
	claimBatch, keptHashes, unclaim                                            string
}

// New returns a Store on pool. It runs no SQL: create the schema first with [Migrate]
// or `idem migrate`, and call [Store.Check] at start-up to find out early when that
// was forgotten.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, errors.New("postgres: New needs a pool, got nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	q := pgx.Identifier{cfg.Schema}.Sanitize()
	return &Store{pool: pool, cfg: cfg, schema: q, sql: buildQueries(q), order: buildOrderQueries(q), live: newLiveness(pool)}, nil
}

func buildQueries(q string) queries {
	return queries{
		claim:    `INSERT INTO ` + q + `.processed (consumer, event_id, payload_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		keptHash: `SELECT payload_hash FROM ` + q + `.processed WHERE consumer = $1 AND event_id = $2`,
		claimBatch: `INSERT INTO ` + q + `.processed (consumer, event_id, payload_hash)
SELECT e.consumer, e.id, e.hash FROM unnest($1::text[], $2::text[], $3::bytea[]) AS e (consumer, id, hash)
ON CONFLICT DO NOTHING RETURNING consumer, event_id`,
		keptHashes: `SELECT p.consumer, p.event_id, p.payload_hash FROM ` + q + `.processed AS p
JOIN unnest($1::text[], $2::text[]) AS k (consumer, id) ON p.consumer = k.consumer AND p.event_id = k.id`,
		unclaim: `DELETE FROM ` + q + `.processed WHERE consumer = $1 AND event_id = $2`,
		recordFailure: `INSERT INTO ` + q + `.attempts AS a
    (consumer, event_id, attempts, first_failure_at, last_failure_at, last_error, errors)
VALUES ($1, $2, 1, now(), now(), $3, jsonb_build_array(jsonb_build_object('at', now(), 'error', $3::text)))
ON CONFLICT (consumer, event_id) DO UPDATE SET
    attempts        = a.attempts + 1,
    last_failure_at = now(),
    last_error      = EXCLUDED.last_error,
    errors          = jsonb_path_query_array(EXCLUDED.errors || a.errors, '$[0 to $n]', jsonb_build_object('n', $4::int - 1))
RETURNING attempts`,
		// The first statement counts this start under the store's instance; the
		// second adds one crash for each other instance with unfinished starts whose
		// liveness lock nobody holds (a process that died, however many deliveries it
		// ran), and the counts of the rows from before instances existed (instance
		// 0), in the same snapshot: when the event is processed, neither returns a
		// row.
		startAttempt: `WITH mine AS (
    INSERT INTO ` + q + `.started AS s (consumer, event_id, instance, started)
    SELECT $1, $2, $3, 1
    WHERE NOT EXISTS (SELECT 1 FROM ` + q + `.processed WHERE consumer = $1 AND event_id = $2)
    ON CONFLICT (consumer, event_id, instance) DO UPDATE SET started = s.started + 1, last_started_at = now()
    RETURNING 1
)
SELECT 1 + coalesce((
    SELECT sum(CASE WHEN o.instance = 0 THEN o.started ELSE 1 END) FROM ` + q + `.started AS o
    WHERE o.consumer = $1 AND o.event_id = $2 AND o.instance <> $3
      AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND l.classid = $4::integer::oid AND l.objid = o.instance::oid AND l.objsubid = 2)
), 0)::integer
FROM mine`,
		finishAttempt: `DELETE FROM ` + q + `.started WHERE consumer = $1 AND event_id = $2`,
		putDeadLetter: `INSERT INTO ` + q + `.dead_letters AS d
    (consumer, event_id, topic, handler, message_uuid, payload, metadata, reason, error,
     fingerprint, attempts, correlation_id, trace_id, span_id, host, event_type, event_version,
     history, first_failed_at, last_failed_at)
SELECT $1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
    coalesce(a.errors, jsonb_build_array(jsonb_build_object('at', now(), 'error', $9::text))),
    coalesce(a.first_failure_at, now()), coalesce(a.last_failure_at, now())
FROM (SELECT 1) AS one
LEFT JOIN ` + q + `.attempts AS a ON a.consumer = $1 AND a.event_id = $2
ON CONFLICT (consumer, event_id) DO UPDATE SET
    topic            = EXCLUDED.topic,
    handler          = EXCLUDED.handler,
    message_uuid     = EXCLUDED.message_uuid,
    payload          = EXCLUDED.payload,
    metadata         = EXCLUDED.metadata,
    reason           = EXCLUDED.reason,
    error            = EXCLUDED.error,
    fingerprint      = EXCLUDED.fingerprint,
    attempts         = EXCLUDED.attempts,
    correlation_id   = EXCLUDED.correlation_id,
    trace_id         = EXCLUDED.trace_id,
    span_id          = EXCLUDED.span_id,
    host             = EXCLUDED.host,
    event_type       = EXCLUDED.event_type,
    event_version    = EXCLUDED.event_version,
    history          = EXCLUDED.history,
    last_failed_at   = EXCLUDED.last_failed_at,
    status           = 'pending',
    published_at     = NULL,
    count            = d.count + 1,
    dead_lettered_at = now(),
    updated_at       = now()
RETURNING id, xmax = 0, status, count, first_failed_at, last_failed_at, dead_lettered_at`,
	}
}

// Schema returns the store's schema name.
func (s *Store) Schema() string { return s.cfg.Schema }

// Check verifies that the schema exists and is migrated to the version this build of
// idem expects. It returns an error wrapping [ErrNotMigrated] when it is not.
func (s *Store) Check(ctx context.Context) error {
	var exists bool
	err := s.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", s.schema+".schema_migrations").Scan(&exists)
	if err != nil {
		return fmt.Errorf("postgres: check schema %s: %w", s.cfg.Schema, err)
	}
	if !exists {
		return fmt.Errorf("%w: schema %s has no idem tables; run `idem migrate --schema %s` or postgres.Migrate", ErrNotMigrated, s.cfg.Schema, s.cfg.Schema)
	}
	v, err := currentVersion(ctx, s.pool, s.schema)
	if err != nil {
		return err
	}
	if want := LatestVersion(); v < want {
		return fmt.Errorf("%w: schema %s is at version %d, this idem needs %d; run `idem migrate --schema %s`", ErrNotMigrated, s.cfg.Schema, v, want, s.cfg.Schema)
	}
	return nil
}

// Classify is [Classify]; the consumer uses it for errors when its store is a *Store.
func (s *Store) Classify(err error) retry.Class { return Classify(err) }

// Run claims key in a new transaction and runs fn in it; see dedup.Store. BEGIN and the
// claim travel in one round trip. fn finds the transaction with [TxFromContext]; it
// must not commit or roll it back.
//
// When ctx carries the transaction of a watermill-sql subscriber on pgx (and
// Config.IgnoreSubscriberTx is false), Run claims in a savepoint of that transaction
// instead and leaves the commit to the subscriber's ack.
func (s *Store) Run(ctx context.Context, key dedup.Key, fn func(ctx context.Context) error) (bool, error) {
	if outer, ok := s.subscriberTx(ctx); ok {
		return s.runInSavepoint(ctx, outer, key, fn)
	}
	hash := dedup.PayloadHash(ctx)
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(s.sql.claim, key.Consumer, key.EventID, hash)
	br := s.pool.SendBatch(ctx, b)
	tx := br.Tx()
	_, beginErr := br.Exec()
	tag, claimErr := br.Exec()
	if err := cmp.Or(beginErr, claimErr, br.Close()); err != nil {
		rollback(ctx, tx)
		return false, &storeError{Op: "claim " + key.String(), Err: err}
	}
	if tag.RowsAffected() == 0 {
		err := s.checkConflict(ctx, tx, key, hash)
		rollback(ctx, tx)
		return false, err
	}
	o, err := s.checkOrder(ctx, tx, key)
	if err != nil && o.park != nil {
		if perr := s.parkQuarantined(ctx, tx, key, o); perr != nil {
			rollback(ctx, tx)
			return false, perr
		}
		if cerr := tx.Commit(ctx); cerr != nil {
			return false, &storeError{Op: "commit the parking of " + key.String(), Err: cerr}
		}
		return false, err
	}
	if err != nil {
		rollback(ctx, tx)
		return false, s.orderRefused(ctx, o, err)
	}
	if err := fn(ContextWithTx(ctx, tx)); err != nil {
		rollback(ctx, tx)
		return true, err
	}
	if err := s.moveMark(ctx, tx, key, o); err != nil {
		rollback(ctx, tx)
		return true, err
	}
	if err := tx.Commit(ctx); err != nil {
		return true, &storeError{Op: "commit " + key.String(), Err: err}
	}
	return true, nil
}

// checkConflict compares the payload hash of a duplicate with the one kept for the
// processed event, reading it in tx, and reports a difference as a
// *dedup.ConflictingDuplicateError. It reads nothing when the duplicate has no hash; a
// failed read leaves the duplicate a plain one.
func (s *Store) checkConflict(ctx context.Context, tx pgx.Tx, key dedup.Key, hash []byte) error {
	if hash == nil {
		return nil
	}
	var kept []byte
	if err := tx.QueryRow(ctx, s.sql.keptHash, key.Consumer, key.EventID).Scan(&kept); err != nil {
		return nil // the duplicate stands a plain one: only the comparison failed
	}
	if kept != nil && !bytes.Equal(kept, hash) {
		return &dedup.ConflictingDuplicateError{Key: key, Kept: kept, Got: hash}
	}
	return nil
}

const savepoint = "idem_claim"

func (s *Store) runInSavepoint(ctx context.Context, outer pgx.Tx, key dedup.Key, fn func(ctx context.Context) error) (bool, error) {
	hash := dedup.PayloadHash(ctx)
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT " + savepoint)
	b.Queue(s.sql.claim, key.Consumer, key.EventID, hash)
	br := outer.SendBatch(ctx, b)
	_, spErr := br.Exec()
	tag, claimErr := br.Exec()
	if err := cmp.Or(spErr, claimErr, br.Close()); err != nil {
		if spErr == nil {
			rollbackTo(ctx, outer)
		}
		return false, &storeError{Op: "claim " + key.String() + " in the subscriber's transaction", Err: err}
	}
	if tag.RowsAffected() == 0 {
		return false, s.checkConflict(ctx, outer, key, hash)
	}
	o, err := s.checkOrder(ctx, outer, key)
	if err != nil && o.park != nil {
		if perr := s.parkQuarantined(ctx, outer, key, o); perr != nil {
			rollbackTo(ctx, outer)
			return false, perr
		}
		return false, err // parked when the subscriber's transaction commits
	}
	if err != nil {
		rollbackTo(ctx, outer)
		return false, s.orderRefused(ctx, o, err)
	}
	if err := fn(ContextWithTx(ctx, outer)); err != nil {
		rollbackTo(ctx, outer)
		return true, err
	}
	if err := s.moveMark(ctx, outer, key, o); err != nil {
		rollbackTo(ctx, outer)
		return true, err
	}
	return true, nil
}

// subscriberTx returns the pgx transaction a watermill-sql subscriber consumes the
// message in, if any.
func (s *Store) subscriberTx(ctx context.Context) (pgx.Tx, bool) {
	if s.cfg.IgnoreSubscriberTx {
		return nil, false
	}
	wtx, ok := wsql.TxFromContext(ctx)
	if !ok {
		return nil, false
	}
	switch t := wtx.(type) {
	case *wsql.PgxTx:
		return t.Tx, t.Tx != nil
	case wsql.PgxTx:
		return t.Tx, t.Tx != nil
	}
	return nil, false
}

func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_ = tx.Rollback(ctx) // a failed rollback closes the connection; nothing was committed
}

func rollbackTo(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepoint) // on failure the subscriber's transaction fails and rolls back
}

// RecordFailure counts one failed attempt of key; see dedup.Store. It runs as a single
// statement in its own transaction, so it commits even when the attempt's own
// transaction rolled back.
func (s *Store) RecordFailure(ctx context.Context, key dedup.Key, cause string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, s.sql.recordFailure, key.Consumer, key.EventID, cause, s.cfg.ErrorHistory).Scan(&n)
	if err != nil {
		return 0, &storeError{Op: "record failure of " + key.String(), Err: err}
	}
	return n, nil
}

// StartAttempt counts a started delivery for the crash guard; see dedup.StartRecorder.
// Its transaction commits with synchronous_commit off, in the one round trip that
// begins it: the count must survive a crash of the consumer, which it does as soon as
// PostgreSQL has it, not a crash of PostgreSQL itself, which would lose at most the
// last fraction of a second of counts (a crash loop is then found one delivery later).
// That spares the delivery a second flush of the WAL to disk.
//
// Each Store counts its starts as one process (an instance number on its rows). The
// starts of another Store are crashes only when its process is gone: while it holds
// its liveness ([Store.HoldLive], which the crash guard takes for every delivery) they
// are deliveries still running, never counted.
func (s *Store) StartAttempt(ctx context.Context, key dedup.Key) (int, error) {
	var n int
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(s.sql.startAttempt, key.Consumer, key.EventID, s.live.instance.Load(), lockClass)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	_, beginErr := br.Exec()
	_, setErr := br.Exec()
	countErr := br.QueryRow().Scan(&n)
	_, commitErr := br.Exec()
	closeErr := br.Close()
	noRows := errors.Is(countErr, pgx.ErrNoRows)
	if noRows {
		countErr = nil // processed already
	}
	if err := cmp.Or(beginErr, setErr, countErr, commitErr, closeErr); err != nil {
		return 0, &storeError{Op: "count the start of " + key.String(), Err: err}
	}
	if noRows {
		return 0, nil
	}
	return n, nil
}

// FinishAttempt records that a delivery ended without crashing; see dedup.StartRecorder.
func (s *Store) FinishAttempt(ctx context.Context, key dedup.Key) error {
	if _, err := s.pool.Exec(ctx, s.sql.finishAttempt, key.Consumer, key.EventID); err != nil {
		return &storeError{Op: "count the end of " + key.String(), Err: err}
	}
	return nil
}

// Put stores a dead letter, or updates the one of the same event; see dlq.Store. The
// crash guard's count of the event stays: another copy of a crash-looped event is
// dead-lettered at once instead of crashing the consumer again; replaying the dead
// letter resets it.
func (s *Store) Put(ctx context.Context, d *dlq.DeadLetter) (bool, error) {
	md, err := dlq.EncodeMetadata(d.Metadata)
	if err != nil {
		return false, err
	}
	payload := d.Payload
	if payload == nil {
		payload = []byte{}
	}
	var created bool
	var status string
	err = s.pool.QueryRow(ctx, s.sql.putDeadLetter,
		d.Consumer, d.EventID, d.Topic, d.Handler, d.MessageUUID, payload, string(md),
		string(d.Reason), d.Error, d.Fingerprint, d.Attempts, d.CorrelationID, d.TraceID, d.SpanID,
		d.Host, d.EventType, d.EventVersion,
	).Scan(&d.ID, &created, &status, &d.Count, &d.FirstFailedAt, &d.LastFailedAt, &d.DeadLetteredAt)
	if err != nil {
		return false, &storeError{Op: "store dead letter " + d.Consumer + "/" + d.EventID, Err: err}
	}
	d.Status = dlq.Status(status)
	return created, nil
}

type txKey struct{}

// ContextWithTx returns a copy of ctx that carries tx, as [Store.Run] hands it to the
// handler.
func ContextWithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFromContext returns the transaction idem opened for the message being handled:
// write through it, and the writes commit together with the event's claim, once.
func TxFromContext(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(pgx.Tx)
	return tx, ok
}
