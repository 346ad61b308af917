package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/internal/bulk"
	"github.com/idemkit/idem/retry"
)

var _ dedup.BatchRunner = (*Store)(nil)

// The savepoints of a batch: one for the event whose handler runs, one for a batch
// handler's write. Each is opened again, under the same name, for the next event.
const (
	itemSavepoint  = "idem_item"
	writeSavepoint = "idem_write"
)

// RunBatch runs the attempts of items, of any consumers, in one transaction; see
// dedup.BatchRunner. BEGIN
// and the claims of all items travel in one round trip (one multi-row INSERT … ON
// CONFLICT DO NOTHING RETURNING). Each claimed event's handler then runs on the
// batch's connection, in a savepoint opened when it first uses the transaction (a
// handler that does not write costs no round trip) and released when it returns, so
// that a failing handler, or one that swallowed an SQL error, rolls back alone, its
// claim with it. The events that [BatchHandler]s enlisted are written at the end, one
// call per handler. Then one COMMIT.
//
// A batch of a watermill-sql subscriber's messages is not run in its transaction: use
// batching with another transport, or leave it off with watermill-sql, which commits
// the claim, the effects and the consumed offset together already.
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
	consumers := make([]string, len(live))
	ids := make([]string, len(live))
	hashes := make([][]byte, len(live))
	for i, it := range live {
		consumers[i], ids[i], hashes[i] = it.Key.Consumer, it.Key.EventID, dedup.PayloadHash(it.Ctx)
	}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(s.sql.claimBatch, consumers, ids, hashes)
	br := s.pool.SendBatch(ctx, b)
	tx := br.Tx()
	_, beginErr := br.Exec()
	var claimedKeys []dedup.Key
	claimErr := beginErr
	if beginErr == nil {
		var rows pgx.Rows
		rows, claimErr = br.Query()
		if claimErr == nil {
			claimedKeys, claimErr = pgx.CollectRows(rows, pgx.RowToStructByPos[dedup.Key])
		}
	}
	if err := errors.Join(claimErr, br.Close()); err != nil {
		rollback(ctx, tx)
		bulk.FailAll(live, &storeError{Op: "claim " + op, Err: err})
		return
	}
	claimed := make(map[dedup.Key]bool, len(claimedKeys))
	for _, k := range claimedKeys {
		claimed[k] = true
	}
	var duplicates []*dedup.BatchItem
	for _, it := range live {
		if claimed[it.Key] {
			it.Claimed = true
			delete(claimed, it.Key) // a second item with the key is a duplicate of the first
		} else {
			duplicates = append(duplicates, it)
		}
	}
	if err := s.checkConflicts(ctx, tx, duplicates); err != nil {
		rollback(ctx, tx)
		bulk.FailAll(live, &storeError{Op: "read the payload hashes of " + op, Err: err})
		return
	}

	run := &bulk.Run[pgx.Tx]{}
	var lastWriter *dedup.BatchItem // its savepoint is not known to be sound yet
	for _, it := range live {
		if !it.Claimed {
			continue
		}
		if err := s.runItem(tx, run, it, &lastWriter); err != nil {
			rollback(ctx, tx)
			bulk.FailAll(live, &storeError{Op: "isolate an event of " + op, Err: err})
			return
		}
	}
	if lastWriter != nil {
		_, err := tx.Exec(ctx, "RELEASE SAVEPOINT "+itemSavepoint)
		if aborted(err) {
			err = s.failAborted(ctx, tx, lastWriter)
		}
		if err != nil {
			rollback(ctx, tx)
			bulk.FailAll(live, &storeError{Op: "isolate an event of " + op, Err: err})
			return
		}
	}
	if err := run.Write(ctx, tx, isolation{s: s, tx: tx}); err != nil {
		rollback(ctx, tx)
		bulk.FailAll(live, &storeError{Op: "write " + op, Err: err})
		return
	}
	if err := tx.Commit(ctx); err != nil {
		bulk.FailAll(live, &storeError{Op: "commit " + op, Err: err})
	}
}

// runItem runs the handler of one claimed item of a batch in its own savepoint,
// opened with the handler's first statement. A savepoint is not released when its
// handler returns: the next one opened shows that it is sound, or, failing with
// SQLSTATE 25P02, that the handler before returned nil after an SQL error aborted its
// part of the transaction; that item is then failed, and this one run again. lastWriter
// is the item whose savepoint is not known to be sound yet. runItem returns an error
// only when the store's own statements fail.
func (s *Store) runItem(tx pgx.Tx, run *bulk.Run[pgx.Tx], it *dedup.BatchItem, lastWriter **dedup.BatchItem) error {
	ctx := context.WithoutCancel(it.Ctx)
	for {
		itx := &itemTx{Tx: tx}
		run.SetCurrent(it)
		err := it.Fn(bulk.NewContext(ContextWithTx(it.Ctx, itx), run))
		run.SetCurrent(nil)
		if itx.prevAborted && *lastWriter != nil {
			if err := s.failAborted(ctx, tx, *lastWriter); err != nil {
				return err
			}
			*lastWriter = nil
			continue // its first statement never ran: run it again on a sound transaction
		}
		if itx.open {
			*lastWriter = nil // opening a savepoint after it showed the last writer's sound
		}
		if err == nil {
			if itx.open {
				*lastWriter = it
			}
			return nil
		}
		it.Err = err
		b := &pgx.Batch{}
		if itx.open {
			b.Queue("ROLLBACK TO SAVEPOINT " + itemSavepoint)
		}
		b.Queue(s.sql.unclaim, it.Key.Consumer, it.Key.EventID)
		return tx.SendBatch(ctx, b).Close()
	}
}

// failAborted fails it, whose handler returned nil after an SQL error aborted its
// savepoint (the newest): the savepoint is rolled back, and its claim removed.
func (s *Store) failAborted(ctx context.Context, tx pgx.Tx, it *dedup.BatchItem) error {
	it.Err = fmt.Errorf("postgres: the handler returned nil after an SQL error aborted its part of the transaction: %w", pgx.ErrTxCommitRollback)
	b := &pgx.Batch{}
	b.Queue("ROLLBACK TO SAVEPOINT " + itemSavepoint)
	b.Queue(s.sql.unclaim, it.Key.Consumer, it.Key.EventID)
	return tx.SendBatch(ctx, b).Close()
}

// aborted reports whether err is SQLSTATE 25P02: the transaction is aborted.
func aborted(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25P02"
}

// checkConflicts sets a *dedup.ConflictingDuplicateError on each duplicate whose
// payload hash differs from the one kept with the processed event.
func (s *Store) checkConflicts(ctx context.Context, tx pgx.Tx, duplicates []*dedup.BatchItem) error {
	var consumers, ids []string
	for _, it := range duplicates {
		if dedup.PayloadHash(it.Ctx) != nil {
			consumers, ids = append(consumers, it.Key.Consumer), append(ids, it.Key.EventID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, s.sql.keptHashes, consumers, ids)
	if err != nil {
		return err
	}
	kept := map[dedup.Key][]byte{}
	var k dedup.Key
	var hash []byte
	if _, err := pgx.ForEachRow(rows, []any{&k.Consumer, &k.EventID, &hash}, func() error {
		kept[k] = bytes.Clone(hash)
		return nil
	}); err != nil {
		return err
	}
	for _, it := range duplicates {
		got, k := dedup.PayloadHash(it.Ctx), kept[it.Key]
		if got != nil && k != nil && !bytes.Equal(got, k) {
			it.Err = &dedup.ConflictingDuplicateError{Key: it.Key, Kept: k, Got: got}
		}
	}
	return nil
}

// isolation gives bulk.Run.Write the batch's savepoints.
type isolation struct {
	s  *Store
	tx pgx.Tx
}

func (i isolation) Savepoint(ctx context.Context) error {
	_, err := i.tx.Exec(ctx, "SAVEPOINT "+writeSavepoint)
	return err
}

func (i isolation) RollbackTo(ctx context.Context) error {
	_, err := i.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+writeSavepoint)
	return err
}

func (i isolation) Unclaim(ctx context.Context, key dedup.Key) error {
	_, err := i.tx.Exec(ctx, i.s.sql.unclaim, key.Consumer, key.EventID)
	return err
}

func (i isolation) TxContext(ctx context.Context) context.Context { return ContextWithTx(ctx, i.tx) }

// itemTx is the transaction one event's handler gets in a batch: the batch's, with a
// savepoint opened with the handler's first statement (in the same round trip, for
// Exec), so that its writes can be rolled back alone. Commit and Rollback are refused:
// the batch commits once. Its LargeObjects and Conn are the batch's own, without the
// savepoint.
type itemTx struct {
	pgx.Tx
	open bool
	// prevAborted says opening the savepoint failed because an earlier handler's
	// savepoint was aborted (SQLSTATE 25P02).
	prevAborted bool
}

// errItemTxManaged is returned by itemTx's Commit and Rollback.
var errItemTxManaged = errors.New("postgres: the transaction belongs to idem's batch: return an error to roll the event back, never commit or roll back yourself")

func (t *itemTx) savepoint(ctx context.Context) error {
	if t.open {
		return nil
	}
	_, err := t.Tx.Exec(ctx, "SAVEPOINT "+itemSavepoint)
	return t.opened(err)
}

// opened records the outcome of opening the savepoint.
func (t *itemTx) opened(err error) error {
	switch {
	case err == nil:
		t.open = true
	case aborted(err):
		t.prevAborted = true
	}
	return err
}

func (t *itemTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.savepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Begin(ctx)
}

func (t *itemTx) Commit(context.Context) error   { return errItemTxManaged }
func (t *itemTx) Rollback(context.Context) error { return errItemTxManaged }

func (t *itemTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.savepoint(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

func (t *itemTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.savepoint(ctx); err != nil {
		return errBatchResults{err}
	}
	return t.Tx.SendBatch(ctx, b)
}

func (t *itemTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.savepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(ctx, name, sql)
}

func (t *itemTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.open || len(args) > 0 && isExecOption(args[0]) {
		if err := t.savepoint(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return t.Tx.Exec(ctx, sql, args...)
	}
	// The savepoint and the statement in one round trip.
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT " + itemSavepoint)
	b.Queue(sql, args...)
	br := t.Tx.SendBatch(ctx, b)
	_, serr := br.Exec()
	tag, err := br.Exec()
	cerr := br.Close()
	if serr != nil {
		return pgconn.CommandTag{}, t.opened(serr)
	}
	t.open = true
	if err != nil {
		return tag, err
	}
	return tag, cerr
}

// isExecOption reports whether arg is one of the options pgx reads from the first
// argument of Exec, which a batched statement would not honour.
func isExecOption(arg any) bool {
	switch arg.(type) {
	case pgx.QueryExecMode, pgx.QueryRewriter:
		return true
	}
	return false
}

func (t *itemTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.savepoint(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Query(ctx, sql, args...)
}

func (t *itemTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.savepoint(ctx); err != nil {
		return errRow{err}
	}
	return t.Tx.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatchResults struct{ err error }

func (r errBatchResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errBatchResults) Query() (pgx.Rows, error)         { return nil, r.err }
func (r errBatchResults) QueryRow() pgx.Row                { return errRow{r.err} }
func (r errBatchResults) Close() error                     { return r.err }
func (r errBatchResults) Tx() pgx.Tx                       { return nil }

// BatchHandler adapts a typed handler that writes many events at once through tx, for
// bulk writes (one multi-row INSERT, or COPY): with batching on (consumer.Config.Batch)
// fn receives the claimed, non-duplicate events of a whole batch, decoded from JSON,
// in the batch's transaction, which commits their writes together with their claims.
// When fn fails, each event is written again alone, in a savepoint of its own, so that
// only the events it fails on fail (and follow the usual retry and dead-letter rules),
// at the cost of one more call per event. Without batching, fn receives one event per
// call, in its attempt's transaction. A payload that does not decode is a permanent
// error. fn must not commit or roll back tx.
func BatchHandler[T any](fn func(ctx context.Context, tx pgx.Tx, events []T) error) message.NoPublishHandlerFunc {
	return bulk.Handler(fn, TxFromContext, retry.Infrastructure(ErrNoTx))
}
