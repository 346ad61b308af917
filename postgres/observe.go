package postgres

import (
	"context"
	"fmt"
	"time"
)

// PendingDeadLetters counts the dead letters waiting for review and returns when the
// oldest of them was dead-lettered (zero when there are none). It feeds the gauges
// idem.dead_letters.pending and idem.dead_letters.oldest_age (see
// middleware.DeadLetterBacklog). It is safe for concurrent use.
func (s *Store) PendingDeadLetters(ctx context.Context) (count int64, oldest time.Time, err error) {
	var at *time.Time
	err = s.pool.QueryRow(ctx, `SELECT count(*), min(dead_lettered_at) FROM `+s.schema+`.dead_letters WHERE status = 'pending'`).
		Scan(&count, &at)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("postgres: count pending dead letters: %w", err)
	}
	if at != nil {
		oldest = *at
	}
	return count, oldest, nil
}
