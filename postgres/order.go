package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

var (
	_ dedup.Sequencer   = (*Store)(nil)
	_ dedup.Quarantiner = (*Store)(nil)
)

type orderQueries struct {
	ensureMark, lockMark, moveMark, markGap, mark, quarantine, park string
}

func buildOrderQueries(q string) orderQueries {
	return orderQueries{
		ensureMark: `INSERT INTO ` + q + `.entity_marks (consumer, entity_id, seq) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING`,
		lockMark:   `SELECT seq, extract(epoch FROM clock_timestamp() - gap_since)::float8, blocked_by, blocked_seq FROM ` + q + `.entity_marks WHERE consumer = $1 AND entity_id = $2 FOR UPDATE`,
		moveMark:   `UPDATE ` + q + `.entity_marks SET seq = $3, gap_since = NULL, updated_at = now() WHERE consumer = $1 AND entity_id = $2`,
		// Records the first sighting of a gap after mark $3, unless the mark moved
		// meanwhile, and returns how long the gap has been open, in seconds. The
		// clock is clock_timestamp(), not now(): a watermill-sql subscriber keeps its
		// transaction, and so the time it began, across the resends of a message.
		markGap: `INSERT INTO ` + q + `.entity_marks AS m (consumer, entity_id, seq, gap_since) VALUES ($1, $2, 0, clock_timestamp())
ON CONFLICT (consumer, entity_id) DO UPDATE SET gap_since = coalesce(m.gap_since, clock_timestamp()) WHERE m.seq = $3
RETURNING extract(epoch FROM clock_timestamp() - gap_since)::float8`,
		mark: `SELECT coalesce((SELECT seq FROM ` + q + `.entity_marks WHERE consumer = $1 AND entity_id = $2), 0)`,
		quarantine: `INSERT INTO ` + q + `.entity_marks AS m (consumer, entity_id, seq, blocked_by, blocked_seq) VALUES ($1, $2, 0, $3, $4)
ON CONFLICT (consumer, entity_id) DO UPDATE SET blocked_by = EXCLUDED.blocked_by, blocked_seq = EXCLUDED.blocked_seq, updated_at = now()
WHERE m.seq < EXCLUDED.blocked_seq AND (m.blocked_seq IS NULL OR m.blocked_seq >= EXCLUDED.blocked_seq)`,
		park: `INSERT INTO ` + q + `.parked_events (consumer, event_id, entity_id, seq, topic, payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (consumer, event_id) DO NOTHING`,
	}
}

// Mark returns the high-water mark of entityID for consumer; see dedup.Sequencer.
func (s *Store) Mark(ctx context.Context, consumer, entityID string) (int64, error) {
	var seq int64
	if err := s.pool.QueryRow(ctx, s.order.mark, consumer, entityID).Scan(&seq); err != nil {
		return 0, &storeError{Op: "read the mark of " + consumer + "/" + entityID, Err: err}
	}
	return seq, nil
}

// ordered is what checkOrder decided for a claimed event.
type ordered struct {
	entity dedup.Entity
	on     bool
	// newGap says the event found a gap not recorded before.
	newGap bool
	// park is the message to park behind the entity's dead letter, or nil.
	park *dedup.Parked
}

// checkOrder locks the mark row of the event's entity in tx, when ctx carries one,
// and compares the event with it. A non-nil error means fn must not run: a
// *dedup.StaleEventError, a *dedup.GapError (the caller records the gap once tx is
// rolled back), or a failure of the store.
func (s *Store) checkOrder(ctx context.Context, tx pgx.Tx, key dedup.Key) (ordered, error) {
	e, gap, ok := dedup.EntityFrom(ctx)
	if !ok {
		return ordered{}, nil
	}
	b := &pgx.Batch{}
	b.Queue(s.order.ensureMark, key.Consumer, e.ID)
	b.Queue(s.order.lockMark, key.Consumer, e.ID)
	br := tx.SendBatch(ctx, b)
	_, insErr := br.Exec()
	var mark int64
	var open *float64
	var blockedBy *string
	var blockedSeq *int64
	lockErr := br.QueryRow().Scan(&mark, &open, &blockedBy, &blockedSeq)
	if err := errors.Join(insErr, lockErr, br.Close()); err != nil {
		return ordered{}, &storeError{Op: "lock the mark of " + key.Consumer + "/" + e.ID, Err: err}
	}
	switch {
	case e.Seq <= mark:
		return ordered{}, &dedup.StaleEventError{Key: key, Entity: e, Mark: mark}
	case gap == dedup.GapStrict && blockedSeq != nil && e.Seq > *blockedSeq:
		if p, ok := dedup.ParkingFrom(ctx); ok {
			return ordered{entity: e, park: &p}, &dedup.QuarantinedError{Key: key, Entity: e, BlockedBy: *blockedBy, BlockedSeq: *blockedSeq}
		}
		fallthrough
	case gap == dedup.GapStrict && e.Seq > mark+1:
		g := &dedup.GapError{Key: key, Entity: e, Mark: mark}
		if open == nil {
			return ordered{newGap: true}, g
		}
		g.Open = time.Duration(*open * float64(time.Second))
		return ordered{}, g
	}
	return ordered{entity: e, on: true}, nil
}

// markWriter runs a statement: the pool, or the watermill-sql subscriber's transaction.
type markWriter interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// writer is where the writes that outlive an attempt go: the pool, or, when ctx
// carries the watermill-sql subscriber's transaction, that transaction, which may
// hold the entity's mark row from an earlier message of its batch (writing through
// the pool would wait for it forever).
func (s *Store) writer(ctx context.Context) markWriter {
	if outer, ok := s.subscriberTx(ctx); ok {
		return outer
	}
	return s.pool
}

// recordGap records, in a statement of its own, when the gap g was first seen, and
// sets how long it has been open.
func (s *Store) recordGap(ctx context.Context, g *dedup.GapError) error {
	var secs float64
	err := s.writer(ctx).QueryRow(ctx, s.order.markGap, g.Key.Consumer, g.Entity.ID, g.Mark).Scan(&secs)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // the mark moved meanwhile: the next delivery finds out
	}
	if err != nil {
		return &storeError{Op: "record the gap of " + g.Key.Consumer + "/" + g.Entity.ID, Err: err}
	}
	g.Open = time.Duration(secs * float64(time.Second))
	return nil
}

// moveMark moves the mark of o's entity to its sequence number, in tx.
func (s *Store) moveMark(ctx context.Context, tx pgx.Tx, key dedup.Key, o ordered) error {
	if !o.on {
		return nil
	}
	if _, err := tx.Exec(ctx, s.order.moveMark, key.Consumer, o.entity.ID, o.entity.Seq); err != nil {
		return &storeError{Op: "move the mark of " + key.Consumer + "/" + o.entity.ID, Err: err}
	}
	return nil
}

// orderRefused finishes a claim that checkOrder refused, once its transaction (or
// savepoint) rolled back: a gap seen for the first time is recorded.
func (s *Store) orderRefused(ctx context.Context, o ordered, err error) error {
	var g *dedup.GapError
	if o.newGap && errors.As(err, &g) {
		if rerr := s.recordGap(ctx, g); rerr != nil {
			return rerr
		}
	}
	return err
}

// Quarantine blocks the entity of a dead-lettered event; see dedup.Quarantiner. When
// ctx carries the watermill-sql subscriber's transaction (and Config.IgnoreSubscriberTx
// is false), it writes in that transaction, which commits it with the message's ack.
func (s *Store) Quarantine(ctx context.Context, key dedup.Key, e dedup.Entity) error {
	if _, err := s.writer(ctx).Exec(ctx, s.order.quarantine, key.Consumer, e.ID, key.EventID, e.Seq); err != nil {
		return &storeError{Op: "quarantine " + key.Consumer + "/" + e.ID, Err: err}
	}
	return nil
}

// parkQuarantined parks the message of o behind its entity's dead letter in tx, and
// drops the event's claim, so that its release is applied as a new event.
func (s *Store) parkQuarantined(ctx context.Context, tx pgx.Tx, key dedup.Key, o ordered) error {
	md, err := dlq.EncodeMetadata(o.park.Metadata)
	if err != nil {
		return err
	}
	payload := o.park.Payload
	if payload == nil {
		payload = []byte{}
	}
	b := &pgx.Batch{}
	b.Queue(s.sql.unclaim, key.Consumer, key.EventID)
	b.Queue(s.order.park, key.Consumer, key.EventID, o.entity.ID, o.entity.Seq, o.park.Topic, payload, string(md))
	br := tx.SendBatch(ctx, b)
	_, delErr := br.Exec()
	_, insErr := br.Exec()
	if err := errors.Join(delErr, insErr, br.Close()); err != nil {
		return &storeError{Op: "park " + key.String() + " behind its entity's dead letter", Err: err}
	}
	return nil
}
