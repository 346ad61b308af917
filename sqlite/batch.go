package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/bulk"
	"github.com/idemkit/idem/retry"
)

var _ dedup.BatchRunner = (*Store)(nil)

// RunBatch runs the attempts of items in one transaction; see dedup.BatchRunner. With
// SQLite's one writer, this is where batching helps most: the batch takes the write
// lock once and syncs the file once for all its events. Each event is claimed and
// handled in a savepoint of its own, so that a failing one rolls back alone, its claim
// with it. The events that [BatchHandler]s enlisted are written at the end, one call
// per handler. Then one COMMIT.
func (s *Store) RunBatch(ctx context.Context, items []*dedup.BatchItem) {
	live := make([]*dedup.BatchItem, 0, len(items))
	for _, it := range items {
		it.Claimed, it.Err = false, nil
		if err := it.Ctx.Err(); err != nil {
			it.Err = err
			continue
		}
		live = append(live, it)
	}
	if len(live) == 0 {
		return
	}
	op := fmt.Sprintf("batch of %d events", len(live))
	release, err := s.lockWriter(ctx)
	if err != nil {
		bulk.FailAll(live, &storeError{Op: "claim " + op, Err: err})
		return
	}
	defer release()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		bulk.FailAll(live, &storeError{Op: "begin " + op, Err: err})
		return
	}
	run := &bulk.Run[*sql.Tx]{}
	for _, it := range live {
		if err := s.runItem(ctx, tx, run, it); err != nil {
			_ = tx.Rollback()
			bulk.FailAll(live, &storeError{Op: "claim or isolate an event of " + op, Err: err})
			return
		}
	}
	if err := run.Write(ctx, tx, isolation{s: s, tx: tx}); err != nil {
		_ = tx.Rollback()
		bulk.FailAll(live, &storeError{Op: "write " + op, Err: err})
		return
	}
	if err := tx.Commit(); err != nil {
		bulk.FailAll(live, &storeError{Op: "commit " + op, Err: err})
	}
}

// runItem claims one item of a batch and, when the claim is new, runs its handler, both
// in a savepoint. It returns an error only when the store's own statements fail.
func (s *Store) runItem(ctx context.Context, tx *sql.Tx, run *bulk.Run[*sql.Tx], it *dedup.BatchItem) error {
	if _, err := tx.ExecContext(ctx, "SAVEPOINT idem_item"); err != nil {
		return err
	}
	hash := dedup.PayloadHash(it.Ctx)
	res, err := tx.ExecContext(ctx, s.sql.claim, it.Key.Consumer, it.Key.EventID, hash)
	var n int64
	if err == nil {
		n, err = res.RowsAffected()
	}
	if err != nil {
		return err
	}
	if n == 0 {
		it.Err = s.checkConflict(ctx, tx, it.Key, hash)
	} else {
		it.Claimed = true
		run.SetCurrent(it)
		it.Err = it.Fn(bulk.NewContext(ContextWithTx(it.Ctx, tx), run))
		run.SetCurrent(nil)
		if it.Err != nil {
			if _, err := tx.ExecContext(ctx, "ROLLBACK TO idem_item"); err != nil {
				return err
			}
		}
	}
	_, err = tx.ExecContext(ctx, "RELEASE idem_item")
	return err
}

// isolation gives bulk.Run.Write the batch's savepoints.
type isolation struct {
	s  *Store
	tx *sql.Tx
}

func (i isolation) Savepoint(ctx context.Context) error {
	_, err := i.tx.ExecContext(ctx, "SAVEPOINT idem_write")
	return err
}

func (i isolation) RollbackTo(ctx context.Context) error {
	_, err := i.tx.ExecContext(ctx, "ROLLBACK TO idem_write")
	return err
}

func (i isolation) Unclaim(ctx context.Context, key dedup.Key) error {
	_, err := i.tx.ExecContext(ctx, "DELETE FROM processed WHERE consumer = ?1 AND event_id = ?2", key.Consumer, key.EventID)
	return err
}

func (i isolation) TxContext(ctx context.Context) context.Context { return ContextWithTx(ctx, i.tx) }

// BatchHandler adapts a typed handler that writes many events at once through tx, for
// bulk writes (one multi-row INSERT): with batching on (consumer.Config.Batch) fn
// receives the claimed, non-duplicate events of a whole batch, decoded from JSON, in
// the batch's transaction, which commits their writes together with their claims.
// When fn fails, each event is written again alone, in a savepoint of its own, so that
// only the events it fails on fail (and follow the usual retry and dead-letter rules).
// Without batching, fn receives one event per call, in its attempt's transaction. A
// payload that does not decode is a permanent error. fn must not commit or roll back
// tx.
func BatchHandler[T any](fn func(ctx context.Context, tx *sql.Tx, events []T) error) message.NoPublishHandlerFunc {
	return bulk.Handler(fn, TxFromContext, retry.Infrastructure(ErrNoTx))
}
