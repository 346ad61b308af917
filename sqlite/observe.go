package sqlite

import (
	"context"
	"time"
)

// PendingDeadLetters counts the dead letters waiting for review and returns when the
// oldest of them was dead-lettered (zero when there are none). It feeds the gauges
// idem.dead_letters.pending and idem.dead_letters.oldest_age (see
// middleware.DeadLetterBacklog). It reads without waiting for writers and is safe
// for concurrent use.
func (s *Store) PendingDeadLetters(ctx context.Context) (count int64, oldest time.Time, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT count(*), min(dead_lettered_at) FROM dead_letters WHERE status = 'pending'`).
		Scan(&count, timeText{&oldest})
	if err != nil {
		return 0, time.Time{}, &storeError{Op: "count pending dead letters", Err: err}
	}
	return count, oldest, nil
}
