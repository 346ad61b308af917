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
}

// Prune deletes processed rows, attempt counts and the crash guard's counts older than
// cfg.Retention, measured
// on the database clock, in batches of cfg.BatchSize, each its own transaction. It
// never deletes a row younger than the retention, and it keeps attempt counts of
// events that have a pending dead letter. It stops at the first error or when ctx
// ends, reporting what it deleted so far.
func (s *Store) Prune(ctx context.Context, cfg PruneConfig) (PruneResult, error) {
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultPruneBatch
	}
	var res PruneResult
	switch {
	case cfg.Retention < 0:
		return res, fmt.Errorf("postgres: PruneConfig.Retention must be positive, got %s", cfg.Retention)
	case cfg.Retention < cfg.ReplayWindow:
		return res, fmt.Errorf("postgres: PruneConfig.Retention %s is shorter than ReplayWindow %s: a late redelivery or replay would apply its effect twice; raise Retention", cfg.Retention, cfg.ReplayWindow)
	case cfg.BatchSize < 1:
		return res, fmt.Errorf("postgres: PruneConfig.BatchSize must be at least 1, got %d", cfg.BatchSize)
	}
	secs := cfg.Retention.Seconds()
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
	for _, step := range []struct {
		sql   string
		count *int64
	}{{processed, &res.Processed}, {attempts, &res.Attempts}, {started, &res.Started}} {
		for {
			tag, err := s.pool.Exec(ctx, step.sql, secs, cfg.BatchSize)
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
