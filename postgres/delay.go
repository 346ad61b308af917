package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/dlq"
)

var _ dedup.Parker = (*Store)(nil)

// Park keeps p for another attempt after p.Delay; see dedup.Parker. The payload and
// metadata are kept as the message came, secrets included, as the broker held them,
// until the message is published again.
func (s *Store) Park(ctx context.Context, p dedup.Parked) error {
	md, err := dlq.EncodeMetadata(p.Metadata)
	if err != nil {
		return err
	}
	payload := p.Payload
	if payload == nil {
		payload = []byte{}
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO `+s.schema+`.delayed AS d (consumer, event_id, topic, payload, metadata, due_at)
VALUES ($1, $2, $3, $4, $5::jsonb, now() + make_interval(secs => $6))
ON CONFLICT (consumer, event_id) DO UPDATE SET
    topic = EXCLUDED.topic, payload = EXCLUDED.payload, metadata = EXCLUDED.metadata,
    due_at = EXCLUDED.due_at, parked_at = now()`,
		p.Key.Consumer, p.Key.EventID, p.Topic, payload, string(md), max(p.Delay, 0).Seconds())
	if err != nil {
		return &storeError{Op: "park " + p.Key.String(), Err: err}
	}
	return nil
}

// TakeDue hands the parked messages that are due to fn; see dedup.Parker. It locks
// them with FOR UPDATE SKIP LOCKED, so that many schedulers share the work.
func (s *Store) TakeDue(ctx context.Context, limit int, fn func(ctx context.Context, p dedup.Parked) error) (int, error) {
	if limit < 1 {
		return 0, fmt.Errorf("postgres: TakeDue needs a limit of at least 1, got %d", limit)
	}
	taken := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT consumer, event_id, topic, payload, metadata::text, due_at FROM `+s.schema+`.delayed
WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED`, limit)
		if err != nil {
			return err
		}
		var due []dedup.Parked
		for rows.Next() {
			var p dedup.Parked
			var md string
			if err := rows.Scan(&p.Key.Consumer, &p.Key.EventID, &p.Topic, &p.Payload, &md, &p.Due); err != nil {
				rows.Close()
				return err
			}
			if p.Metadata, err = dlq.DecodeMetadata([]byte(md)); err != nil {
				rows.Close()
				return err
			}
			due = append(due, p)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var consumers, ids []string
		for _, p := range due {
			if fn(ctx, p) == nil {
				consumers, ids = append(consumers, p.Key.Consumer), append(ids, p.Key.EventID)
			}
		}
		if len(ids) == 0 {
			return nil
		}
		tag, err := tx.Exec(ctx, `DELETE FROM `+s.schema+`.delayed AS d USING unnest($1::text[], $2::text[]) AS k (consumer, id)
WHERE d.consumer = k.consumer AND d.event_id = k.id`, consumers, ids)
		taken = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, &storeError{Op: "take due parked messages", Err: err}
	}
	return taken, nil
}
