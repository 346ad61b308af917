package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

var (
	_ dedup.Sequencer   = (*Store)(nil)
	_ dedup.Quarantiner = (*Store)(nil)
)

const (
	ensureMarkSQL = `INSERT INTO entity_marks (consumer, entity_id, seq, updated_at) VALUES (?1, ?2, 0, ` + nowSQL + `) ON CONFLICT DO NOTHING`
	lockMarkSQL   = `SELECT seq, (julianday('now') - julianday(gap_since)) * 86400.0, blocked_by, blocked_seq FROM entity_marks WHERE consumer = ?1 AND entity_id = ?2`
	moveMarkSQL   = `UPDATE entity_marks SET seq = ?3, gap_since = NULL, updated_at = ` + nowSQL + ` WHERE consumer = ?1 AND entity_id = ?2`
	// Records the first sighting of a gap after mark ?3, unless the mark moved
	// meanwhile, and returns how long the gap has been open, in seconds.
	markGapSQL = `INSERT INTO entity_marks AS m (consumer, entity_id, seq, gap_since, updated_at)
SELECT ?1, ?2, 0, n.now, n.now FROM (SELECT ` + nowSQL + ` AS now) AS n WHERE true
ON CONFLICT (consumer, entity_id) DO UPDATE SET gap_since = coalesce(m.gap_since, excluded.gap_since) WHERE m.seq = ?3
RETURNING (julianday('now') - julianday(gap_since)) * 86400.0`
	markSQL       = `SELECT coalesce((SELECT seq FROM entity_marks WHERE consumer = ?1 AND entity_id = ?2), 0)`
	quarantineSQL = `INSERT INTO entity_marks AS m (consumer, entity_id, seq, blocked_by, blocked_seq, updated_at)
SELECT ?1, ?2, 0, ?3, ?4, ` + nowSQL + ` WHERE true
ON CONFLICT (consumer, entity_id) DO UPDATE SET blocked_by = excluded.blocked_by, blocked_seq = excluded.blocked_seq, updated_at = excluded.updated_at
WHERE m.seq < excluded.blocked_seq AND (m.blocked_seq IS NULL OR m.blocked_seq >= excluded.blocked_seq)`
	parkSQL = `INSERT INTO parked_events (consumer, event_id, entity_id, seq, topic, payload, metadata, parked_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ` + nowSQL + `) ON CONFLICT (consumer, event_id) DO NOTHING`
)

// Mark returns the high-water mark of entityID for consumer; see dedup.Sequencer.
func (s *Store) Mark(ctx context.Context, consumer, entityID string) (int64, error) {
	var seq int64
	if err := s.db.QueryRowContext(ctx, markSQL, consumer, entityID).Scan(&seq); err != nil {
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

// checkOrder reads the mark of the event's entity in tx, when ctx carries one, and
// compares the event with it; tx holds SQLite's write lock, so no other event of the
// entity is decided meanwhile. A non-nil error means fn must not run: a
// *dedup.StaleEventError, a *dedup.GapError (the caller records the gap once tx is
// rolled back), or a failure of the store.
func (s *Store) checkOrder(ctx context.Context, tx *sql.Tx, key dedup.Key) (ordered, error) {
	e, gap, ok := dedup.EntityFrom(ctx)
	if !ok {
		return ordered{}, nil
	}
	var mark int64
	var open sql.NullFloat64
	var blockedBy sql.NullString
	var blockedSeq sql.NullInt64
	_, err := tx.ExecContext(ctx, ensureMarkSQL, key.Consumer, e.ID)
	if err == nil {
		err = tx.QueryRowContext(ctx, lockMarkSQL, key.Consumer, e.ID).Scan(&mark, &open, &blockedBy, &blockedSeq)
	}
	if err != nil {
		return ordered{}, &storeError{Op: "lock the mark of " + key.Consumer + "/" + e.ID, Err: err}
	}
	switch {
	case e.Seq <= mark:
		return ordered{}, &dedup.StaleEventError{Key: key, Entity: e, Mark: mark}
	case gap == dedup.GapStrict && blockedSeq.Valid && e.Seq > blockedSeq.Int64:
		if p, ok := dedup.ParkingFrom(ctx); ok {
			return ordered{entity: e, park: &p}, &dedup.QuarantinedError{Key: key, Entity: e, BlockedBy: blockedBy.String, BlockedSeq: blockedSeq.Int64}
		}
		fallthrough
	case gap == dedup.GapStrict && e.Seq > mark+1:
		g := &dedup.GapError{Key: key, Entity: e, Mark: mark}
		if !open.Valid {
			return ordered{newGap: true}, g
		}
		g.Open = time.Duration(open.Float64 * float64(time.Second))
		return ordered{}, g
	}
	return ordered{entity: e, on: true}, nil
}

// orderRefused finishes a claim that checkOrder refused, once its transaction rolled
// back: a gap seen for the first time is recorded in a statement of its own. The
// caller holds the write slot.
func (s *Store) orderRefused(ctx context.Context, o ordered, err error) error {
	var g *dedup.GapError
	if !o.newGap || !errors.As(err, &g) {
		return err
	}
	var secs float64
	rerr := s.db.QueryRowContext(ctx, markGapSQL, g.Key.Consumer, g.Entity.ID, g.Mark).Scan(&secs)
	switch {
	case errors.Is(rerr, sql.ErrNoRows):
		return err // the mark moved meanwhile: the next delivery finds out
	case rerr != nil:
		return &storeError{Op: "record the gap of " + g.Key.Consumer + "/" + g.Entity.ID, Err: rerr}
	}
	g.Open = time.Duration(secs * float64(time.Second))
	return err
}

// moveMark moves the mark of o's entity to its sequence number, in tx.
func (s *Store) moveMark(ctx context.Context, tx *sql.Tx, key dedup.Key, o ordered) error {
	if !o.on {
		return nil
	}
	if _, err := tx.ExecContext(ctx, moveMarkSQL, key.Consumer, o.entity.ID, o.entity.Seq); err != nil {
		return &storeError{Op: "move the mark of " + key.Consumer + "/" + o.entity.ID, Err: err}
	}
	return nil
}

// Quarantine blocks the entity of a dead-lettered event; see dedup.Quarantiner.
func (s *Store) Quarantine(ctx context.Context, key dedup.Key, e dedup.Entity) error {
	return s.write(ctx, "quarantine "+key.Consumer+"/"+e.ID, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, quarantineSQL, key.Consumer, e.ID, key.EventID, e.Seq)
		return err
	})
}

// parkQuarantined parks the message of o behind its entity's dead letter in tx, and
// drops the event's claim, so that its release is applied as a new event.
func (s *Store) parkQuarantined(ctx context.Context, tx *sql.Tx, key dedup.Key, o ordered) error {
	md, err := dlq.EncodeMetadata(o.park.Metadata)
	if err != nil {
		return err
	}
	payload := o.park.Payload
	if payload == nil {
		payload = []byte{}
	}
	_, err = tx.ExecContext(ctx, "DELETE FROM processed WHERE consumer = ?1 AND event_id = ?2", key.Consumer, key.EventID)
	if err == nil {
		_, err = tx.ExecContext(ctx, parkSQL, key.Consumer, key.EventID, o.entity.ID, o.entity.Seq, o.park.Topic, payload, string(md))
	}
	if err != nil {
		return &storeError{Op: "park " + key.String() + " behind its entity's dead letter", Err: err}
	}
	return nil
}
