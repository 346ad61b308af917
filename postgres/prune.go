package postgres

import (
	"context"
	"fmt"
	"time"
)

// DefaultRetention is how long processed rows are kept by default: a redelivery or a
// replay of an event older than this is no longer recognised as a duplicate.
const DefaultRetention = 7 * 24 * time.Hour

// DefaultPruneBatch is how many rows one pruning statement deletes by default.
const DefaultPruneBatch = 1000

// DefaultDeadLetterRetention is how long a reviewed dead letter (replayed, discarded
// or resolved) is kept by default after its last change.
const DefaultDeadLetterRetention = 30 * 24 * time.Hour

// DefaultAuditRetention is how long the audit of operators' reviews is kept by default.
const DefaultAuditRetention = 365 * 24 * time.Hour

// PruneConfig configures [Store.Prune].
type PruneConfig struct {
	// Retention is how long processed rows and attempt counts are kept after their
	// last change. Defaults to DefaultRetention.
	Retention time.Duration
	// ReplayWindow is the longest time after which an event may still be redelivered
	// or replayed (the broker's retention, the dead-letter review period). Prune
	// refuses a Retention shorter than it, since pruning a row inside that window
	// would let a late duplicate apply its effect twice. Defaults to 0.
	ReplayWindow time.Duration
	// DeadLetterRetention is how long a reviewed dead letter (replayed, discarded or
	// resolved) is kept after its last change; pending dead letters are never pruned.
	// Defaults to DefaultDeadLetterRetention; -1 keeps them forever.
	DeadLetterRetention time.Duration
	// AuditRetention is how long the audit rows of operators' reviews are kept. It
	// must not be shorter than DeadLetterRetention: the audit of a review outlives the
	// dead letters it names. Defaults to DefaultAuditRetention; -1 keeps them forever.
	AuditRetention time.Duration
	// BatchSize is how many rows one statement deletes, so that pruning never holds
	// long locks. Defaults to DefaultPruneBatch.
	BatchSize int
}

// PruneResult counts what [Store.Prune] deleted.
type PruneResult struct {
	Processed int64
	Attempts  int64
	// Started counts the crash guard's rows of deliveries that started before the
	// retention.
	Started int64
	// DeadLetters counts the reviewed dead letters past DeadLetterRetention; Audit
	// the audit rows past AuditRetention.
	DeadLetters int64
	Audit       int64
}

// Prune deletes processed rows, attempt counts and the crash guard's counts older than
// cfg.Retention, reviewed dead letters older than cfg.DeadLetterRetention and audit
// rows older than cfg.AuditRetention, all measured on the database clock, in batches of cfg.BatchSize, each its own transaction. It
// never deletes a row younger than the retention, and it keeps attempt counts of
// events that have a pending dead letter. It stops at the first error or when ctx
// ends, reporting what it deleted so far.
func (s *Store) Prune(ctx context.Context, cfg PruneConfig) (PruneResult, error) {
	const pkg = "postgres"
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultPruneBatch
	}
	if cfg.DeadLetterRetention == 0 {
		cfg.DeadLetterRetention = DefaultDeadLetterRetention
	}
	if cfg.AuditRetention == 0 {
		cfg.AuditRetention = DefaultAuditRetention
	}
	var res PruneResult
	switch {
	case cfg.Retention < 0:
		return res, fmt.Errorf("postgres: PruneConfig.Retention must be positive, got %s", cfg.Retention)
	case cfg.Retention < cfg.ReplayWindow:
		return res, fmt.Errorf("postgres: PruneConfig.Retention %s is shorter than ReplayWindow %s: a late redelivery or replay would apply its effect twice; raise Retention", cfg.Retention, cfg.ReplayWindow)
	case cfg.DeadLetterRetention < -1 || cfg.DeadLetterRetention > 0 && cfg.DeadLetterRetention < time.Second:
		return res, fmt.Errorf("%[1]s: PruneConfig.DeadLetterRetention must be at least 1s, or -1 to keep reviewed dead letters forever, got %[2]s", pkg, cfg.DeadLetterRetention)
	case cfg.AuditRetention < -1 || cfg.AuditRetention > 0 && cfg.AuditRetention < time.Second:
		return res, fmt.Errorf("%[1]s: PruneConfig.AuditRetention must be at least 1s, or -1 to keep the audit forever, got %[2]s", pkg, cfg.AuditRetention)
	case cfg.AuditRetention > 0 && (cfg.DeadLetterRetention < 0 || cfg.AuditRetention < cfg.DeadLetterRetention):
		return res, fmt.Errorf("%s: PruneConfig.AuditRetention %s is shorter than DeadLetterRetention %s: the audit of a review must outlive the dead letters it names; raise AuditRetention or set it to -1", pkg, cfg.AuditRetention, cfg.DeadLetterRetention)
	case cfg.BatchSize < 1:
		return res, fmt.Errorf("postgres: PruneConfig.BatchSize must be at least 1, got %d", cfg.BatchSize)
	}
	processed := `DELETE FROM ` + s.schema + `.processed WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ` + s.schema + `.processed
    WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))`
	attempts := `DELETE FROM ` + s.schema + `.attempts a WHERE ctid = ANY (ARRAY(
    SELECT a.ctid FROM ` + s.schema + `.attempts a
    WHERE a.last_failure_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM ` + s.schema + `.dead_letters d
                      WHERE d.consumer = a.consumer AND d.event_id = a.event_id AND d.status = 'pending')
    LIMIT $2))`
	started := `DELETE FROM ` + s.schema + `.started WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ` + s.schema + `.started
    WHERE last_started_at < now() - make_interval(secs => $1) LIMIT $2))`
	deadLetters := `DELETE FROM ` + s.schema + `.dead_letters WHERE id = ANY (ARRAY(
    SELECT id FROM ` + s.schema + `.dead_letters
    WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1) LIMIT $2))`
	audit := `DELETE FROM ` + s.schema + `.dead_letter_audit WHERE id = ANY (ARRAY(
    SELECT id FROM ` + s.schema + `.dead_letter_audit
    WHERE at < now() - make_interval(secs => $1) LIMIT $2))`
	for _, step := range []struct {
		sql   string
		age   time.Duration
		count *int64
	}{
		{processed, cfg.Retention, &res.Processed},
		{attempts, cfg.Retention, &res.Attempts},
		{started, cfg.Retention, &res.Started},
		{deadLetters, cfg.DeadLetterRetention, &res.DeadLetters},
		{audit, cfg.AuditRetention, &res.Audit},
	} {
		if step.age < 0 {
			continue // kept forever
		}
		for {
			tag, err := s.pool.Exec(ctx, step.sql, step.age.Seconds(), cfg.BatchSize)
			if err != nil {
				return res, fmt.Errorf("postgres: prune: %w", err)
			}
			*step.count += tag.RowsAffected()
			if tag.RowsAffected() < int64(cfg.BatchSize) {
				break
			}
		}
	}
	return res, nil
}

// Stats describes the store's tables, for `idem dedup stats`.
type Stats struct {
	Processed          int64
	OldestProcessed    time.Time // zero when there are none
	Attempts           int64
	PendingDeadLetters int64
	OldestPending      time.Time // zero when there are none
}

// Stats counts the rows of the store's tables.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	var oldestProcessed, oldestPending *time.Time
	err := s.pool.QueryRow(ctx, `SELECT
    (SELECT count(*) FROM `+s.schema+`.processed),
    (SELECT min(processed_at) FROM `+s.schema+`.processed),
    (SELECT count(*) FROM `+s.schema+`.attempts),
    (SELECT count(*) FROM `+s.schema+`.dead_letters WHERE status = 'pending'),
    (SELECT min(dead_lettered_at) FROM `+s.schema+`.dead_letters WHERE status = 'pending')`).
		Scan(&st.Processed, &oldestProcessed, &st.Attempts, &st.PendingDeadLetters, &oldestPending)
	if err != nil {
		return st, fmt.Errorf("postgres: stats: %w", err)
	}
	if oldestProcessed != nil {
		st.OldestProcessed = *oldestProcessed
	}
	if oldestPending != nil {
		st.OldestPending = *oldestPending
	}
	return st, nil
}
