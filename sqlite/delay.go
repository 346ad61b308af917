package sqlite

import (
	"context"
	"database/sql"
	"fmt"

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
	delay := fmt.Sprintf("+%.3f seconds", max(p.Delay, 0).Seconds())
	return s.write(ctx, "park "+p.Key.String(), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO delayed (consumer, event_id, topic, payload, metadata, due_at, parked_at)
VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?6), `+nowSQL+`)
ON CONFLICT (consumer, event_id) DO UPDATE SET
    topic = excluded.topic, payload = excluded.payload, metadata = excluded.metadata,
    due_at = excluded.due_at, parked_at = excluded.parked_at`,
			p.Key.Consumer, p.Key.EventID, p.Topic, payload, string(md), delay)
		return err
	})
}

// TakeDue hands the parked messages that are due to fn; see dedup.Parker. It holds the
// write lock while fn runs: SQLite has one writer.
func (s *Store) TakeDue(ctx context.Context, limit int, fn func(ctx context.Context, p dedup.Parked) error) (int, error) {
	if limit < 1 {
		return 0, fmt.Errorf("sqlite: TakeDue needs a limit of at least 1, got %d", limit)
	}
	taken := 0
	err := s.write(ctx, "take due parked messages", func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT consumer, event_id, topic, payload, metadata, due_at FROM delayed
WHERE due_at <= `+nowSQL+` ORDER BY due_at LIMIT ?1`, limit)
		if err != nil {
			return err
		}
		var due []dedup.Parked
		for rows.Next() {
			var p dedup.Parked
			var md string
			if err := rows.Scan(&p.Key.Consumer, &p.Key.EventID, &p.Topic, &p.Payload, &md, timeText{&p.Due}); err != nil {
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
		for _, p := range due {
			if fn(ctx, p) != nil {
				continue
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM delayed WHERE consumer = ?1 AND event_id = ?2`, p.Key.Consumer, p.Key.EventID); err != nil {
				return err
			}
			taken++
		}
		return nil
	})
	return taken, err
}
